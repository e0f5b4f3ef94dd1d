"""``make device-results RUN=DIR``: keep a GPU run's report in ``benchmarks/`` and rebuild the README's results table.

The run's ``device-check.json`` and ``device-check.md`` are copied to ``benchmarks/<date>-<gpu>.json`` and ``.md``
(never over an earlier run's files), and the table between the README's two ``device-check`` markers is rebuilt from
every GPU report in ``benchmarks/``. A DRY run is refused: it is not a measurement. ``--table-only`` only rebuilds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- device-check results: begin (make device-results rebuilds this block) -->"
END = "<!-- device-check results: end -->"
NO_RUN = (
    "No GPU run recorded yet. `make device-check` on a GPU machine, then `make device-results RUN=<its OUT>` "
    "(benchmarks/README.md)."
)


def slug(text: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``: a file-name-safe GPU name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def load_report(path: Path) -> dict[str, Any] | None:
    """A device-check report from a GPU run, or None for anything else (DRY runs, other JSON files)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or report.get("kind") != "device-check" or report.get("dry"):
        return None
    if not (report.get("environment") or {}).get("gpu"):
        return None
    return report


def _step(report: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next((s for s in report.get("steps", []) if s.get("id") == step_id), {})


def _cell(report: dict[str, Any], step_id: str, text: Callable[[dict[str, Any]], str]) -> str:
    step = _step(report, step_id)
    if not step:
        return "-"
    if step.get("status") != "ok" or not step.get("figures"):
        return str(step.get("status", "-"))
    try:
        return text(step["figures"])
    except (KeyError, TypeError, ZeroDivisionError):
        return "incomplete"


def _versus(f: dict[str, Any]) -> str:
    equivalent = {True: ", equivalent", False: ", NOT equivalent"}.get(f.get("equivalent"), "")
    return (
        f"{f['e2e_median_s']:.3f} s vs {f['stock']['e2e_median_s']:.3f} s ({1 / f['ours_over_stock']:.2f}x{equivalent})"
    )


def _long(f: dict[str, Any]) -> str:
    plan = f.get("memory_plan") or {}
    estimate = f" (est. {plan['estimated_peak_gib']:.1f})" if plan.get("estimated_peak_gib") else ""
    return f"{f['peak_allocated_mb'] / 1024:.1f} GiB{estimate}, {f['e2e_median_s']:.2f} s"


def _batch(f: dict[str, Any]) -> str:
    return f"{f['clips_per_s']:.2f} vs {f['stock']['clips_per_s']:.2f}"


def _fresh(f: dict[str, Any]) -> str:
    before = next((v for k, v in f.items() if k.startswith("first_call_s_in_")), None)
    return f"{f['first_call_s']:.1f} s" + (f" (first process {before:.1f} s)" if before else "")


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("date", lambda r: str(r.get("started", ""))[:10]),
    ("GPU", lambda r: str(r["environment"]["gpu"])),
    ("commit", lambda r: f"`{str(r.get('commit', ''))[:10]}`"),
    ("torch / CUDA", lambda r: f"{r['environment'].get('torch')} / {r['environment'].get('cuda')}"),
    (
        "gpu tests",
        lambda r: _cell(r, "gpu-tests", lambda f: f"{f['passed']} passed, {f['failed'] + f['error']} failed"),
    ),
    ("eager fp16: ours vs stock", lambda r: _cell(r, "eager", _versus)),
    ("fastest vs stock recipe (compiled)", lambda r: _cell(r, "fastest", _versus)),
    ("4 x 150 s, budget 4 GiB: peak (plan), time", lambda r: _cell(r, "long-budget", _long)),
    ("4 x 150 s unconstrained: peak (est.), time", lambda r: _cell(r, "long-unconstrained", _long)),
    ("16 prompts: clips/s ours vs stock", lambda r: _cell(r, "batch", _batch)),
    ("fresh process, warm cache: first call", lambda r: _cell(r, "fresh-cache", _fresh)),
    ("large: fastest vs stock", lambda r: _cell(r, "large-fastest", _versus)),
]


def results_table(reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The README block: one row per GPU report (``name`` links its Markdown), or a line saying there is none."""
    if not reports:
        return NO_RUN
    header = [name for name, _ in COLUMNS] + ["report"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in reports:
        cells = [fn(report).replace("|", "\\|") for _, fn in COLUMNS]
        lines.append("| " + " | ".join([*cells, f"[{name}](benchmarks/{name}.md)"]) + " |")
    return "\n".join(lines)


def collected(benchmarks: Path) -> list[tuple[str, dict[str, Any]]]:
    found = [(p.stem, load_report(p)) for p in sorted(benchmarks.glob("*.json"))]
    return sorted(((n, r) for n, r in found if r is not None), key=lambda nr: (str(nr[1].get("started")), nr[0]))


def rebuild_readme(readme: Path, benchmarks: Path) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"device_results: {readme} has no {BEGIN!r} ... {END!r} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{results_table(collected(benchmarks))}\n{END}{tail}")


def publish(run: Path, benchmarks: Path) -> str:
    """Copy one GPU run's report into ``benchmarks``; return the name it was kept under."""
    source = run / "device-check.json"
    report = load_report(source)
    if report is None:
        raw = json.loads(source.read_text()) if source.exists() else {}
        why = "a DRY run is not a measurement" if raw.get("dry") else "not a GPU device-check report"
        raise SystemExit(f"device_results: {source}: {why}")
    base = f"{str(report['started'])[:10]}-{slug(report['environment']['gpu'])}"
    name, n = base, 1
    while (benchmarks / f"{name}.json").exists():
        if (benchmarks / f"{name}.json").read_bytes() == source.read_bytes():
            return name  # the same run again
        n += 1
        name = f"{base}-{n}"
    benchmarks.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, benchmarks / f"{name}.json")
    if (run / "device-check.md").exists():
        shutil.copyfile(run / "device-check.md", benchmarks / f"{name}.md")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="a device-check OUT dir (device-check.json inside)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the README table")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    if not args.table_only:
        if args.run is None:
            parser.error("give the run's dir (RUN=...), or --table-only")
        name = publish(args.run, args.benchmarks)
        print(f"device-results: kept as {args.benchmarks / name}.json and .md")
    rebuild_readme(args.readme, args.benchmarks)
    print(f"device-results: rebuilt the results table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
