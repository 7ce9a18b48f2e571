"""The export folder both methods share: ``model_index.json``, ``pipeline.py`` and the README model card.

An export is a diffusers-style folder: one subfolder per part (written by the part's own
``save_pretrained``) plus three files this module writes for either pipeline:

* ``model_index.json``: ``_class_name = ["pipeline", <PipelineClass>]``, one ``[library, class]``
  entry per part, and the pipeline's stored settings (every optional constructor argument, so
  diffusers' loader, which passes the index's values to the constructor, and dimo's own loader build
  the same pipeline), plus ``training`` (the checkpoint's step, epoch and hyperparameters when known);
* ``pipeline.py``: imports the pipeline class (and the modules of dimo's part classes) from the
  installed ``dimo``. ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
  runs it; without the opt-in diffusers refuses (its ``ValueError`` names ``trust_remote_code``);
* ``README.md``: what the model is, how it was trained, its parts, its conditioning inputs and how
  to load it (:class:`ModelCard`).

:func:`read_index` and :func:`stored_kwargs` read the index back for the pipelines' own
``from_pretrained``, which runs no file of the folder.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimo.pipelines.errors import GenerateError

__all__ = [
    "INDEX_NAME",
    "PIPELINE_FILE",
    "CARD_NAME",
    "ModelCard",
    "pipeline_source",
    "write_export_files",
    "read_index",
    "stored_kwargs",
    "part_error",
]

INDEX_NAME = "model_index.json"
PIPELINE_FILE = "pipeline.py"
CARD_NAME = "README.md"
#: libraries diffusers imports itself when it loads a part (any other must already be imported)
_DIFFUSERS_LIBRARIES = ("diffusers", "transformers")


@dataclass
class ModelCard:
    """The method-specific text of an export's README (the rest is shared: training, loading).

    Args:
        title: first heading, e.g. ``"3DiMo export"``.
        summary: what the model is (paper, task), one paragraph.
        parts: ``(folder or file, what it holds)`` rows.
        inputs: ``(argument, what it is)`` rows: the conditioning inputs of a call.
        usage: Python lines that load the folder with dimo's loader and generate.
        cli: the ``dimo.cli generate`` line for this folder.
        settings: the stored defaults worth naming (frame size, window, sampling settings).
    """

    title: str
    summary: str
    parts: Sequence[tuple[str, str]]
    inputs: Sequence[tuple[str, str]]
    usage: str
    cli: str
    settings: Mapping[str, Any]


def pipeline_source(pipeline_cls: type, components: Mapping[str, Sequence[str | None]]) -> str:
    """``pipeline.py``: the pipeline class from the installed dimo, and the modules of the parts'
    dimo classes (diffusers resolves a part's library among the modules already imported)."""

    own = sorted(
        {lib for lib, _ in components.values() if lib and lib not in _DIFFUSERS_LIBRARIES}
        - {pipeline_cls.__module__}
    )
    lines = [
        f'"""diffusers entry of a dimo export: {pipeline_cls.__name__} comes from the installed dimo."""',
        "",
        *(f"import {lib}  # noqa: F401  (the module of a part named in model_index.json)" for lib in own),
        f"from {pipeline_cls.__module__} import {pipeline_cls.__name__}",
        "",
        f'__all__ = ["{pipeline_cls.__name__}"]',
        "",
    ]
    return "\n".join(lines)


def _table(header: tuple[str, str], rows: Sequence[tuple[str, str]]) -> str:
    out = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out)


def _json_block(value: Any) -> str:
    return f"```json\n{json.dumps(value, indent=2, sort_keys=True)}\n```"


def _training_text(training: Mapping[str, Any] | None) -> str:
    if not training:
        return (
            "Not recorded: this folder was written from a module in memory, not from a checkpoint "
            "(`python -m dimo.cli export CKPT DIR` records the checkpoint's step and settings)."
        )
    model = f" (`{training['model']}`)" if training.get("model") else ""
    data = training.get("data") or {}
    return (
        f"From checkpoint `{training.get('checkpoint')}`{model} at global step {training.get('global_step')}, "
        f"epoch {training.get('epoch')}. The module's settings (kept under `training` in `{INDEX_NAME}`, "
        f"with the parts' constructor arguments):\n\n{_json_block(training.get('hyperparameters') or {})}\n\n"
        + (f"Data settings:\n\n{_json_block(data)}" if data else "No data settings were recorded.")
    )


def card_text(pipeline_cls: type, card: ModelCard, training: Mapping[str, Any] | None) -> str:
    """The README of an export (markdown)."""

    settings = json.dumps(dict(card.settings), sort_keys=True) if card.settings else "none"
    parts = [
        *card.parts,
        (f"`{INDEX_NAME}`", "parts, stored settings, training record"),
        (
            f"`{PIPELINE_FILE}`",
            f"imports `{pipeline_cls.__name__}` from the installed `dimo` (for diffusers' loader)",
        ),
    ]
    return f"""# {card.title} ({pipeline_cls.__name__})

{card.summary}

## Parts

{_table(("part", "what"), parts)}

Stored defaults: {settings}.

## Conditioning inputs

{_table(("input", "what"), card.inputs)}

## Training

{_training_text(training)}

## Loading

With dimo's loader (local only; runs no file of the folder, every part is read by its own class and
loaded strictly):

```python
{card.usage.strip()}
```

With diffusers' own loader (`dimo` installed): `DiffusionPipeline.from_pretrained("<this folder>",
trust_remote_code=True)` gives the same `{pipeline_cls.__name__}` and the same samples; diffusers runs
the folder's `{PIPELINE_FILE}` only with that opt-in. From the command line:
`{card.cli}` (`docs/generate.md`).
"""


def write_export_files(
    folder: Path,
    pipeline_cls: type,
    components: Mapping[str, Sequence[str | None]],
    stored: Mapping[str, Any],
    card: ModelCard,
    training: Mapping[str, Any] | None,
) -> None:
    """Write ``model_index.json``, ``pipeline.py`` and ``README.md`` into ``folder`` (the parts'
    subfolders are the caller's). ``components``: part name -> ``[library, class]`` (``[None, None]``
    for an absent optional part); ``stored``: the pipeline's optional constructor arguments."""

    import diffusers

    index = {
        "_class_name": [Path(PIPELINE_FILE).stem, pipeline_cls.__name__],
        "_diffusers_version": diffusers.__version__,
        **{name: list(entry) for name, entry in components.items()},
        **stored,
        "training": None if training is None else dict(training),
    }
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    (folder / PIPELINE_FILE).write_text(pipeline_source(pipeline_cls, components))
    (folder / CARD_NAME).write_text(card_text(pipeline_cls, card, training))


def read_index(folder: Path, pipeline_cls: type) -> dict[str, Any]:
    """The ``model_index.json`` of an export of ``pipeline_cls``; anything else is one
    :class:`GenerateError` line."""

    index_file = folder / INDEX_NAME
    if not index_file.is_file():
        raise GenerateError(
            f"pretrained folder not found or incomplete: {index_file} missing "
            "(expected a folder written by `python -m dimo.cli export`)"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GenerateError(f"cannot read {index_file}: {' '.join(str(err).split())}") from None
    if not isinstance(index, dict):
        raise GenerateError(f"{index_file} is not a JSON object; expected a diffusers model index")
    name = index.get("_class_name")
    name = name[-1] if isinstance(name, list) and name else name
    if name != pipeline_cls.__name__:
        raise GenerateError(f"{folder} holds a {name}; expected a {pipeline_cls.__name__} folder")
    if "dimo" in index:
        raise GenerateError(
            f"{folder} was written by an older dimo export (settings under 'dimo'); export its "
            "checkpoint again with `python -m dimo.cli export`"
        )
    return index


def stored_kwargs(pipeline_cls: type, index: Mapping[str, Any]) -> dict[str, Any]:
    """The index's values of ``pipeline_cls``'s optional constructor arguments (not its optional
    parts): what diffusers' loader passes to the constructor, so both loaders agree."""

    params = inspect.signature(pipeline_cls.__init__).parameters
    parts = set(getattr(pipeline_cls, "_optional_components", ()))
    return {
        k: index[k]
        for k, p in params.items()
        if p.default is not inspect.Parameter.empty and k not in parts and k in index
    }


def part_error(folder: Path, err: BaseException) -> GenerateError:
    """One line for a part that does not load (a missing file is named by the part's loader)."""

    return GenerateError(f"cannot load pretrained folder {folder}: {str(err).strip().splitlines()[0]}")
