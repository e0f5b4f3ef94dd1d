"""task=benchmark, the same-process diffusers reference, sweep summaries and the debug group."""

from __future__ import annotations

import csv
import json

import pytest
from support import run_cli as _run

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.tasks.benchmark import format_table, run_benchmark

FAST = ["checkpoint=tiny", "prompt=rain", "negative_prompt=Low quality.", "audio_length_s=1.0", "steps=3"]


def test_benchmark_report_with_diffusers_reference(tmp_path):
    cfg = compose_config(
        [
            *FAST,
            "task=benchmark",
            "benchmark.warmup=1",
            "benchmark.runs=3",
            "benchmark.reference=diffusers",
            f"output.dir={tmp_path}",
        ]
    )
    report = run_benchmark(cfg, tmp_path)
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["e2e_s"] == report["e2e_s"] and len(saved["runs"]) == 3 and saved["warmup"] == 1
    assert set(report["stages_s"]) == {"text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "ranker"}
    for stats in [report["e2e_s"], *report["stages_s"].values()]:
        assert stats["min"] <= stats["median"] <= stats["max"]
    stage_sum = sum(s["median"] for s in report["stages_s"].values())
    assert stage_sum <= report["e2e_s"]["max"] * 1.05
    assert report["denoiser_steps_per_s"] > 0 and report["x_realtime"] > 0 and report["peak_rss_mb"] > 0
    assert report["first_call_s"] > 0 and report["load_s"] > 0
    ref = report["reference"]
    assert len(ref["ratio_per_run"]) == 3 and ref["ratio_median"] > 0
    assert ref["max_abs_diff"] <= 1e-5  # same weights, same seed, fp32: the stock output
    assert any("GPT2Model wrapped" in note for note in ref["notes"])
    table = format_table(report)
    assert "end to end" in table and "diffusers reference" in table


def test_half_precision_equivalence_is_measured_against_stock_fp32(tmp_path):
    """At bf16 the benchmark also runs the stock pipeline in fp32 and reports whether ours stays within its error."""
    cfg = compose_config(
        [
            *FAST,
            "task=benchmark",
            "precision=bf16",
            "benchmark.warmup=0",
            "benchmark.runs=1",
            "benchmark.reference=diffusers",
            "benchmark.save=false",
            f"output.dir={tmp_path}",
        ]
    )
    report = run_benchmark(cfg, tmp_path)
    ref = report["reference"]
    tolerance = ref["stock_vs_stock_fp32_max_abs_diff"]
    assert tolerance > 1e-4  # bf16 really differs from fp32: the yardstick is not trivially zero
    assert ref["equivalent"] == (ref["max_abs_diff"] <= tolerance)
    assert ref["equivalent"]  # same bf16 weights and seed as stock: far inside stock's own bf16 error
    assert ref["ours_vs_stock_fp32_max_abs_diff"] > 0
    assert "equivalence: ours vs stock" in format_table(report)


def test_benchmark_never_replaces_an_earlier_report(tmp_path):
    cfg = compose_config([*FAST, "task=benchmark", "benchmark.warmup=0", "benchmark.runs=1", f"output.dir={tmp_path}"])
    run_benchmark(cfg, tmp_path)
    first = (tmp_path / "benchmark.json").read_text()
    run_benchmark(cfg, tmp_path)
    assert (tmp_path / "benchmark.json").read_text() == first and (tmp_path / "benchmark-1.json").is_file()


def test_a_budgeted_benchmark_records_the_plan_beside_the_measured_peak(tmp_path):
    cfg = compose_config(
        [*FAST, "task=benchmark", "benchmark.warmup=0", "benchmark.runs=1", "memory.budget_gb=0.001", "num_waveforms=2"]
    )
    report = run_benchmark(cfg, tmp_path)
    plan = report["memory_plan"]
    assert plan["budget_gb"] == 0.001 and plan["estimated_peak_gib"] > 0.001  # nothing fits 1 MiB
    assert plan["settings"]["unet_batch_size"] == 1 == report["settings"]["memory"]["unet_batch_size"]
    assert f"estimated peak {plan['estimated_peak_gib']:.2f} GiB" in format_table(report)
    plain = run_benchmark(compose_config([*FAST, "task=benchmark", "benchmark.warmup=0", "benchmark.runs=1"]), tmp_path)
    assert plain["memory_plan"] is None and plain["settings"]["memory"] == {}


@pytest.mark.slow
def test_sweep_summary_lists_every_job_even_failed_ones(tmp_path):
    proc = _run(
        [
            "-m",
            "task=benchmark",
            "benchmark.warmup=0",
            "benchmark.runs=1",
            "checkpoint=tiny",
            "prompt=x",
            "audio_length_s=0.5",
            "scheduler=ddim,pndm",
            "steps=2,4",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0  # one job failed, and the sweep says so
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and "scheduler=pndm steps=2" in failed[0]["overrides"]
    assert "needs at least 4 steps" in failed[0]["error"]
    for row in rows:
        if row["status"] == "COMPLETED":
            assert float(row["e2e_s"]) > 0 and row["outputs"].endswith("benchmark.json")
    assert "3 of 4 job(s) completed" in (sweep / "summary.md").read_text()
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_debug_smoke_run_keeps_nothing(tmp_path):
    proc = _run(["debug=default"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "generated 1 waveform(s), wrote nothing" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_debug_group_settings():
    cfg = compose_config(["debug=default"])
    assert cfg.checkpoint.name == "tiny" and cfg.steps == 2 and "writer" not in cfg.pipeline.chain
