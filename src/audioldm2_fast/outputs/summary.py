"""Sweep summaries: after every job of a multirun, ``summary.csv/md/png`` and ``report.html`` in the sweep dir.

Each job leaves ``job.json`` in its own dir (its overrides, status, error, times, memory, outputs). The summary is
rebuilt from all of them after every job and at the end of the sweep, so it exists (with failed rows saying why)
even when a job fails or the sweep is interrupted.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .files import write_bytes
from .manifest import merge_and_report
from .report import write_sweep_report

COLUMNS = [
    "job", "overrides", "status", "error", "e2e_s", "first_call_s", "load_s", "denoiser_s", "peak_allocated_mb",
    "peak_rss_mb", "reference_ratio", "reference_max_abs_diff", "outputs",
]  # fmt: skip


def job_row(num: int, overrides: list[str], status: str, value: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"job": num, "overrides": " ".join(overrides), "status": status}
    if status != "COMPLETED":
        row["error"] = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
        return row
    value = value if isinstance(value, dict) else {}
    row.update({k: value.get(k) for k in ("e2e_s", "first_call_s", "load_s", "peak_allocated_mb", "peak_rss_mb")})
    row["denoiser_s"] = (value.get("stages_s") or {}).get("denoiser")
    row["reference_ratio"] = value.get("reference_ratio")
    row["reference_max_abs_diff"] = value.get("reference_max_abs_diff")
    row["outputs"] = ";".join(value.get("outputs") or [])
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sweep_dir.glob("*/job.json"):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written right now; the next rebuild picks it up
    return sorted(rows, key=lambda r: r["job"])


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = collect(sweep_dir)
    if not rows:
        return rows
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(sweep_dir / "summary.csv", buf.getvalue().encode())

    done = sum(r["status"] == "COMPLETED" for r in rows)
    lines = [f"# Sweep summary: {done} of {len(rows)} job(s) completed", "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    write_bytes(sweep_dir / "summary.md", ("\n".join(lines) + "\n").encode())
    _plot(rows, sweep_dir / "summary.png")
    write_sweep_report(sweep_dir, rows)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Label each bar with the overrides that differ between jobs; the shared ones go into the title.
    split = [r["overrides"].split() for r in rows]
    shared = set.intersection(*(set(o) for o in split)) if split else set()
    labels = [f"#{r['job']} " + " ".join(o for o in ovr if o not in shared) for r, ovr in zip(rows, split, strict=True)]
    times = [r.get("e2e_s") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    bars = ax.barh(labels, times, color=["tab:blue" if r["status"] == "COMPLETED" else "tab:red" for r in rows])
    for bar, row in zip(bars, rows, strict=True):
        text = f"{row['e2e_s']:.3g} s" if row["status"] == "COMPLETED" and row.get("e2e_s") else "failed"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("end-to-end time (s; median of the timed runs for benchmarks)")
    ax.margins(x=0.15)
    common = " ".join(o for o in split[0] if o in shared)
    ax.set_title("audioldm2-fast sweep" + (f"\n{common}" if common else ""), fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks.sweep_summary``) that keeps the sweep summary up to date."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return
        value = job_return._return_value  # the exception when the job failed; reading .return_value would raise
        row = job_row(hc.job.num, list(job_return.overrides or []), job_return.status.name, value)
        job_dir = Path(hc.runtime.output_dir)
        write_bytes(job_dir / "job.json", (json.dumps(row, default=str) + "\n").encode())
        write_summary(Path(hc.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
        if any(str(o).startswith("shard.index=") for o in config.hydra.overrides.task):
            # One manifest.jsonl for the shards: in their shared output.dir, or else over the job dirs.
            root = config.get("output", {}).get("dir") or config.hydra.sweep.dir
            merge_and_report(Path(str(root)).expanduser())
