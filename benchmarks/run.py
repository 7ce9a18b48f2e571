"""`make bench`: run every ``benchmarks/bench_*.py`` that fits the machine and write the results.

Each benchmark module exposes ``run(profile: str) -> list[dict]``. A row holds at least ``name``,
``setting``, ``value`` and ``unit``; optionally ``median_s``, ``repeats``, ``ratio`` and ``baseline``
(a comparison measured in the same run), ``goal`` (e.g. ``"<= 1.15"``, read against ``ratio`` when
there is one, else ``value``; or ``">= 0.99 r2"`` style free text with ``meets_goal`` set by the
benchmark), ``meets_goal`` and ``curve`` (``{"x": [...], "y": [...], "xlabel": ..., "ylabel": ...}``,
drawn in the scaling plot). A row whose value could not be measured here (e.g. a GPU row on a CPU
machine) carries ``value: None`` and ``note: "not measured"`` — never an invented figure.

Output: ``benchmarks/results/<machine>-<date>.json``, a markdown table on stdout (also saved as .md),
and ``<machine>-<date>-scaling.png`` when any row has a curve.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# measure the checkout this file lives in: a script's folder, not the repository, leads sys.path, so a
# venv whose editable install points at another checkout would otherwise import that one's dimo
sys.path.insert(0, str(HERE.parent))
_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([-+0-9.eE]+)")


def machine_name() -> str:
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0).lower().replace(" ", "-")
        return f"gpu-{re.sub(r'[^a-z0-9-]', '', gpu)}"
    return f"cpu-{platform.machine()}-{os.cpu_count()}c"


def judge(row: dict) -> bool | None:
    """Whether a row meets its goal (None when it has none or was not measured)."""

    if row.get("meets_goal") is not None:
        return bool(row["meets_goal"])
    goal = row.get("goal")
    measured = row.get("ratio") if row.get("ratio") is not None else row.get("value")
    if not goal or measured is None:
        return None
    match = _GOAL.match(str(goal))
    if not match:
        return None
    op, bound = match.group(1), float(match.group(2))
    return {"<=": measured <= bound, ">=": measured >= bound, "<": measured < bound, ">": measured > bound}[
        op
    ]


def _fmt(x) -> str:
    if x is None:
        return "not measured"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def markdown_table(rows: list[dict]) -> str:
    head = "| benchmark | what | setting | value | unit | median s | ratio | goal | status |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ok = judge(r)
        status = "not measured" if r.get("value") is None else {True: "meets", False: "MISSES", None: ""}[ok]
        lines.append(
            "| "
            + " | ".join(
                [
                    r.get("bench", ""),
                    r.get("name", ""),
                    str(r.get("setting", "")),
                    _fmt(r.get("value")),
                    r.get("unit", ""),
                    _fmt(r.get("median_s")) if r.get("median_s") is not None else "",
                    _fmt(r.get("ratio")) if r.get("ratio") is not None else "",
                    str(r.get("goal") or ""),
                    status,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> bool:
    curves = [r for r in rows if r.get("curve")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    nrows = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, curves):
        c = row["curve"]
        ax.plot(c["x"], c["y"], "o-")
        if c.get("fit_y") is not None:
            ax.plot(c["x"], c["fit_y"], "--", color="gray", label="linear fit")
            ax.legend()
        ax.set_xlabel(c.get("xlabel", "x"))
        ax.set_ylabel(c.get("ylabel", row.get("unit", "")))
        ax.set_title(f"{row.get('bench', '')}: {row.get('name', '')}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def discover(only: list[str] | None) -> list[Path]:
    files = sorted(HERE.glob("bench_*.py"))
    if only:
        files = [f for f in files if any(o in f.stem for o in only)]
    return files


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"dimo_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--only", nargs="*", help="substrings of benchmark file names to run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.profile == "gpu" and not torch.cuda.is_available():
        print("bench: PROFILE=gpu needs a CUDA device; GPU rows stay 'not measured'.", file=sys.stderr)

    rows: list[dict] = []
    failures = 0
    for path in discover(args.only):
        print(f"bench: running {path.name} ({args.profile})", file=sys.stderr, flush=True)
        try:
            for row in _load(path).run(args.profile):
                rows.append({"bench": path.stem.removeprefix("bench_"), **row})
        except Exception:  # one broken benchmark must not hide the others' numbers
            failures += 1
            traceback.print_exc()
            rows.append({"bench": path.stem.removeprefix("bench_"), "name": "FAILED", "value": None})
    for row in rows:
        row["meets_goal"] = judge(row)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_name()}-{_dt.date.today().isoformat()}"
    meta = {
        "machine": machine_name(),
        "profile": args.profile,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    table = markdown_table(rows)
    tmp = args.out / f"{stem}.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    tmp.replace(args.out / f"{stem}.json")
    (args.out / f"{stem}.md").write_text(table + "\n")
    plotted = plot_curves(rows, args.out / f"{stem}-scaling.png")
    print(table)
    print(f"\nbench: wrote {args.out / (stem + '.json')}" + (" and the scaling plot" if plotted else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
