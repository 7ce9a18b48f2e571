"""The LightningCLI behind ``python -m dimo.cli {fit,validate,test,predict}``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.cli import LightningCLI


class DimoCLI(LightningCLI):
    """LightningCLI with the defaults a dimo user expects.

    * TensorBoard logger under ``runs/`` (override with ``--trainer.logger``),
    * a :class:`~dimo.callbacks.SampleLogger` configurable as ``--samples.*`` (both methods' sample
      grids and videos through the logger's API),
    * a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` configurable as ``--checkpoint.*``
      (it always saves ``last.ckpt``), written atomically by
      :class:`~dimo.callbacks.reliability.AtomicCheckpointIO` (temp file in the checkpoint folder,
      fsync, rename), unless ``--trainer.plugins`` names another ``CheckpointIO``,
    * :class:`~dimo.callbacks.reliability.CheckpointOnSignal`: SIGTERM/SIGUSR1 save ``last.ckpt`` and
      exit ``128 + signal``,
    * an EMA of the trainable weights configurable as ``--ema.*`` (off unless ``ema.enabled: true``;
      :class:`~dimo.callbacks.ema.EMA`),
    * a learning-rate monitor, and a progress display unless ``--trainer.enable_progress_bar=false``:
      the rich bar on a terminal, plain periodic lines when stdout is redirected,
    * seeding on by default (``--seed_everything``), deterministic data order per seed,
    * the 3DiMo :class:`~dimo.callbacks.StageScheduler` as ``--schedule.*`` (off without stages),
    * pose metrics of the validation samples, :class:`~dimo.callbacks.PoseEvaluation`, as ``--pose_eval.*``
      (off, and left out of the callbacks, unless ``pose_eval.detector`` names a detector folder),
    * every setting typed once (:data:`LINKS`): values that must agree between sections are derived
      from one source at parse time, and typing a derived key is refused with one line naming its
      source; the cross-checks that remain (:func:`check_config`) run at parse time too.
    """

    def __init__(self, *args, **kwargs):
        from lightning.pytorch.callbacks import LearningRateMonitor

        from dimo.callbacks.reliability import CheckpointOnSignal

        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "dimo", "default_hp_metric": False},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step"), CheckpointOnSignal()],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        # raise_errors (what `dimo.cli.main` asks for): a bad value raises instead of printing usage and a
        # multi-line message, so main can reduce it to one line (and --debug can show the traceback)
        common = {"parser_mode": "omegaconf", "exit_on_error": not kwargs.pop("raise_errors", False)}
        parser_kwargs = {**common, **{sub: dict(common) for sub in ("fit", "validate", "test", "predict")}}
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def _instantiate_trainer(self, config, callbacks):
        from lightning.pytorch.callbacks import ProgressBar
        from lightning.pytorch.plugins.io import CheckpointIO

        from dimo.callbacks.pose import PoseEvaluation
        from dimo.callbacks.reliability import AtomicCheckpointIO, default_progress_bar
        from dimo.callbacks.stage_scheduler import StageScheduler

        config = dict(config)
        # the pose_eval section: left out unless it names a detector (the default run pays nothing)
        callbacks = [c for c in callbacks if not (isinstance(c, PoseEvaluation) and not c.active)]
        # the schedule section: left out when it has no stages (HVG), otherwise first among the
        # callbacks, where trainer.callbacks used to put it (the mixture is set before anything else)
        schedulers = [c for c in callbacks if isinstance(c, StageScheduler)]
        callbacks = [c for c in callbacks if not isinstance(c, StageScheduler)]
        listed = config.get("callbacks")
        listed = [] if listed is None else list(listed) if isinstance(listed, list) else [listed]
        config["callbacks"] = [*(c for c in schedulers if c.active), *listed]
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        given = [c for c in (config.get("callbacks") or []) if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar", True) is not False and not given:
            callbacks = [*callbacks, default_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        from dimo.callbacks.ema import EMA
        from dimo.callbacks.pose import PoseEvaluation
        from dimo.callbacks.samples import SampleLogger
        from dimo.callbacks.stage_scheduler import StageScheduler

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EMA, "ema")  # `ema: {enabled: true, decay: ...}` (off by default)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
        parser.add_lightning_class_args(SampleLogger, "samples")
        # val/mpjpe, val/pa_mpjpe, val/t_root of the samples (off unless pose_eval.detector is set)
        parser.add_lightning_class_args(PoseEvaluation, "pose_eval")
        parser.add_lightning_class_args(StageScheduler, "schedule")  # 3DiMo stages; off without stages
        for source, target, compute_fn in LINKS:
            parser.link_arguments(source, target, compute_fn=compute_fn)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        refuse_typed_links(parser, args, self.config)

    # ---- checks before any work --------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        check_config(config.as_dict() if hasattr(config, "as_dict") else config)

    def instantiate_classes(self) -> None:
        self.check_pretrained_paths()
        super().instantiate_classes()

    def check_pretrained_paths(self) -> None:
        """Every missing pretrained file or folder named in the config, listed at once (before any is built)."""

        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        missing = sorted(set(missing_paths(config.as_dict() if hasattr(config, "as_dict") else config)))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} pretrained path(s) in the config do not exist: "
                + "; ".join(f"{key}={path}" for key, path in missing)
                + " (nothing is downloaded: place the files there or point the config at them)"
            )


# config keys that name pretrained inputs which must exist before anything is built
PRETRAINED_KEYS = ("backbone_path", "path", "pretrained", "init_from", "pretrained_path")


def missing_paths(node, prefix: str = "") -> list[tuple[str, str]]:
    """``(config key, path)`` of every pretrained path in ``node`` (nested dicts/lists) that is absent."""

    import os

    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in PRETRAINED_KEYS and isinstance(value, (str, os.PathLike)) and str(value):
                if not os.path.exists(os.path.expanduser(str(value))):
                    out.append((name, str(value)))
            else:
                out += missing_paths(value, name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += missing_paths(value, f"{prefix}[{i}]")
    return out


def check_model_data(model, datamodule) -> None:
    """:func:`check_agreement` on built objects (programmatic runs; the CLI checks its config)."""

    spec = getattr(datamodule, "spec", None)
    config = getattr(getattr(model, "net", None), "config", None)
    config = config if isinstance(config, dict) else {}
    check_agreement(
        from_cache=bool(getattr(model, "from_cache", False)),
        latent_cache=getattr(datamodule, "latent_cache", None),
        task=None if spec is None else spec.task,
        num_frames=None if spec is None else spec.num_frames,
        temporal_compression=config.get("temporal_compression"),
        image_size=config.get("image_size"),
        frame_size=(None, None) if spec is None else (spec.height, spec.width),
    )


def check_config(config: dict) -> None:
    """The model/data agreements no link can express, on the parsed config (nothing built yet)."""

    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("StageScheduler"):
            raise ValueError(
                "the StageScheduler is the `schedule:` section (it owns the mixture and the geometric "
                "weight), not a trainer.callbacks entry: move its init_args there"
            )
    model, data = config.get("model") or {}, config.get("data") or {}
    init = (model.get("init_args") or {}) if isinstance(model, dict) else {}
    data_init = (data.get("init_args") or {}) if isinstance(data, dict) else {}
    net = init.get("net") if isinstance(init.get("net"), dict) else {}
    net_init = net.get("init_args") or {}
    check_agreement(
        from_cache=bool(init.get("from_cache", False)),
        latent_cache=data_init.get("latent_cache"),
        task=data_init.get("task"),
        num_frames=data_init.get("num_frames"),
        temporal_compression=net_init.get("temporal_compression"),
        image_size=net_init.get("image_size"),
        frame_size=(data_init.get("height"), data_init.get("width")),
    )


#: how far ``net.image_size``'s aspect ratio may be from the frames' (the paper: 480x848 at 256x448, 1%)
ASPECT_TOLERANCE = 0.02


def check_agreement(
    from_cache: bool,
    latent_cache,
    task,
    num_frames,
    temporal_compression,
    image_size=None,
    frame_size=(None, None),
) -> None:
    """Model/data agreements a wrong YAML breaks deep inside the first step (or silently), one line each.

    The motion encoder resizes the driving frames to ``net.image_size``, which need not equal the
    data's height x width (the paper config encodes 480x848 frames at 256x448), but a different
    aspect ratio would squash every pose: that is refused.
    """

    if from_cache and latent_cache is None:
        raise ValueError(
            "model from_cache: true needs data latent_cache: <folder of `python -m dimo.cli data cache`>"
        )
    if latent_cache is not None and not from_cache:
        raise ValueError(
            f"data latent_cache={latent_cache} needs model from_cache: true (the frozen encoders are not run)"
        )
    tc = temporal_compression
    if (
        task == "3dimo"
        and isinstance(tc, int)
        and tc > 1
        and isinstance(num_frames, int)
        and (num_frames - 1) % tc
    ):
        lo = (num_frames - 1) // tc * tc + 1
        raise ValueError(
            f"data.num_frames={num_frames} does not fit the Wan VAE: frame counts must be 1 + {tc}k "
            f"(e.g. {lo} or {lo + tc})"
        )
    h, w = frame_size
    if task == "3dimo" and image_size is not None and h and w:
        ih, iw = (int(v) for v in image_size)
        if abs((iw / ih) / (w / h) - 1) > ASPECT_TOLERANCE:
            raise ValueError(
                f"model net.image_size={[ih, iw]} (aspect {iw / ih:.2f}) would squash the data's {h}x{w} "
                f"frames (aspect {w / h:.2f}): keep the aspect ratio"
            )


# ---- every setting typed once: links from one source to the keys that must agree with it ----------
def first_stage_weights(stages) -> dict[str, float] | None:
    """The DataModule's initial source weights: the first stage's (None without stages: its default)."""

    from dimo.callbacks.stage_scheduler import initial_mixture

    return initial_mixture(stages)[0]


def first_stage_cross_view(stages) -> float:
    from dimo.callbacks.stage_scheduler import initial_mixture

    return initial_mixture(stages)[1]


def transformer_folder(pretrained):
    return None if pretrained is None else Path(pretrained) / "transformer"


def vae_folder(pretrained):
    return None if pretrained is None else Path(pretrained) / "vae"


def frozen_part_preset(backbone: str) -> str:
    """The VAE / text / image encoder preset of the net's backbone preset."""

    from dimo.models.threedimo.frozen import part_preset

    return part_preset(backbone)


def vae_stride(pretrained, backbone: str) -> int:
    """Frames per latent frame of the VAE the run will load: ``<pretrained>/vae/config.json`` when
    present (a missing folder stops the run before anything is built), else the backbone's VAE preset."""

    import json

    from dimo.models.threedimo.frozen import VAE_PRESETS, part_preset, vae_temporal_compression

    if pretrained is not None:
        config = Path(pretrained).expanduser() / "vae" / "config.json"
        if config.is_file():
            return vae_temporal_compression(json.loads(config.read_text()))
    return vae_temporal_compression(VAE_PRESETS.get(part_preset(backbone), {}))


_M = "model.init_args."
#: ``(source(s), target, compute_fn)``: the target is derived, never typed (:func:`refuse_typed_links`).
#: A link whose keys the chosen classes do not have (e.g. HVG's) is skipped by jsonargparse.
LINKS: list[tuple[str | tuple[str, ...], str, Callable | None]] = [
    # the stage scheduler owns the mixture and the geometric weight
    ("schedule.stages", "data.init_args.weights", first_stage_weights),
    ("schedule.stages", "data.init_args.cross_view", first_stage_cross_view),
    ("schedule.geo_weight_start", _M + "geo_weight", None),
    # 3DiMo: one pretrained Wan folder for every part
    (_M + "pretrained", _M + "net.init_args.backbone_path", transformer_folder),
    (_M + "pretrained", _M + "vae.init_args.path", vae_folder),
    (_M + "pretrained", _M + "text_encoder.init_args.path", None),
    (_M + "pretrained", _M + "image_encoder.init_args.path", None),
    # one preset: the frozen parts follow the backbone's
    (_M + "net.init_args.backbone", _M + "vae.init_args.preset", frozen_part_preset),
    (_M + "net.init_args.backbone", _M + "text_encoder.init_args.preset", frozen_part_preset),
    (_M + "net.init_args.backbone", _M + "image_encoder.init_args.preset", frozen_part_preset),
    # the VAE's temporal stride, which the net groups motion tokens by (data frames are checked against it)
    (
        (_M + "pretrained", _M + "net.init_args.backbone"),
        _M + "net.init_args.temporal_compression",
        vae_stride,
    ),
]


def apply_model_links(init: dict) -> dict:
    """The model-side :data:`LINKS` applied to a plain ``model.init_args`` dict (a run's ``config.yaml``
    read without the CLI, as ``generate --config`` does): the derived keys the CLI fills at parse time
    (the pretrained folder's parts, the presets, the VAE stride). A part that is not built (None), or a
    link whose source the config does not name, is left alone; a copy is returned."""

    import copy

    init = copy.deepcopy(init)

    missing = object()

    def lookup(key: str):
        d = init
        for part in key[len(_M) :].split("."):
            if not isinstance(d, dict) or part not in d:
                return missing
            d = d[part]
        return d

    for source, target, compute in LINKS:
        sources = (source,) if isinstance(source, str) else source
        if not target.startswith(_M) or not all(s.startswith(_M) for s in sources):
            continue
        section, *middle, leaf = target[len(_M) :].split(".")  # e.g. vae, [init_args], path
        if not isinstance(init.get(section), dict) or "class_path" not in init[section]:
            continue  # not built here (None) or given as an object: nothing to derive
        values = [lookup(s) for s in sources]
        if any(v is missing for v in values):
            continue  # a hand-written config without the source: the target keeps its default
        derived = compute(*values) if compute is not None else values[0]
        parent = init[section]
        for key in middle:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        parent[leaf] = str(derived) if isinstance(derived, Path) else derived
    return init


def refuse_typed_links(parser, args, config) -> None:
    """One line for a derived key that the config files or the command line set (it would be
    overwritten): name the key it comes from instead."""

    # jsonargparse has no public switch for "parse without applying links"; tests/test_links.py checks
    # that this still finds a typed target, so a jsonargparse change cannot silently disable it
    from jsonargparse._link_arguments import skip_apply_links

    with skip_apply_links():
        try:
            if isinstance(args, dict):
                typed = parser.parse_object(args, defaults=False)
            else:
                typed = parser.parse_args(args, defaults=False)
        except (SystemExit, Exception):  # the real parse above accepted these arguments  # noqa: BLE001
            return
    subcommand = config.get("subcommand") if hasattr(config, "get") else None
    if subcommand and subcommand in typed:
        typed = typed[subcommand]
    for source, target, _ in LINKS:
        if target in typed and typed[target] is not None:
            names = " and ".join(source) if isinstance(source, tuple) else source
            parser.error(f"{target} is derived from {names}: set that instead (each setting is typed once)")
