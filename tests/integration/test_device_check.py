"""``make device-check``: the DRY run end to end, and the parts a GPU run relies on (time limits, the budget, the
report rewritten after every step, the profile's analysis, publishing results), so that a GPU window fails only for
GPU reasons."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support import ROOT

BENCHMARKS = ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


device_check = _load("device_check")
device_profile = _load("device_profile")
device_results = _load("device_results")

MAIN_STEPS = ["environment", "gpu-tests", "eager", "graphs", "fastest", "profile", "long-budget", "long-unconstrained"]
ALL_STEPS = [*MAIN_STEPS, "batch", "fresh-cache", "large-eager", "large-graphs", "large-fastest", "large-long-budget"]
ALL_STEPS.append("large-long-unconstrained")


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dry_run_measures_every_step_and_reports_it(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "-s", "device-check", "DRY=1", "PROFILE=1", f"OUT={out}", f"WORK={work}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device-check.json").read_text())
    steps = {s["id"]: s for s in report["steps"]}
    assert [s["id"] for s in report["steps"]] == ALL_STEPS
    assert report["dry"] and report["finished"] and report["kind"] == "device-check"
    assert len(report["commit"]) == 40 and report["elapsed_s"] <= wall + 1
    assert all(s["status"] in device_check.STATUSES for s in report["steps"])
    for sid in ALL_STEPS:
        step = steps[sid]
        if sid.startswith("large-"):
            assert step["status"] == "skipped" and "DRY" in step["reason"]
            continue
        assert step["status"] == "ok", (sid, step.get("reason"), step.get("log_tail"))
        assert step["wall_s"] > 0 and step["figures"], sid
        assert all(math.isfinite(x) for x in _numbers(step["figures"])), sid

    env = steps["environment"]["figures"]
    assert env["torch"] and env["diffusers"] and env["transformers"] and env["commit"] == report["commit"]
    tests = steps["gpu-tests"]["figures"]
    assert tests["source"] == "junit" and tests["failed"] == tests["error"] == 0
    assert tests["passed"] + tests["skipped"] == len(tests["tests"]) > 0
    for sid in ("eager", "graphs", "fastest", "batch"):
        f = steps[sid]["figures"]
        assert f["e2e_median_s"] > 0 and f["stock"]["e2e_median_s"] > 0 and f["ours_over_stock"] > 0
        assert f["max_abs_diff"] < 1e-4  # fp32 on the CPU: the same output
        assert f["first_call_s"] > 0 and f["load_s"] > 0 and f["settings"]["checkpoint"] == "tiny"
    assert steps["batch"]["figures"]["clips"] == 2
    budget = steps["long-budget"]["figures"]["memory_plan"]
    assert budget["steps"] != "nothing" and budget["estimated_peak_gib"] <= budget["budget_gb"] * 1.5
    free = steps["long-unconstrained"]["figures"]
    assert free["memory_plan"]["steps"] == "nothing" and set(free["memory_settings"]) == {"budget_gb"}
    assert free["clips"] == 2 and free["audio_length_s"] == pytest.approx(2.56, abs=0.01)
    assert steps["fresh-cache"]["figures"]["first_call_s_in_fastest"] > 0
    profile = steps["profile"]["figures"]
    assert profile["device"] == "cpu" and profile["kernels_per_step"] > 0 and profile["call"]["top_kernels"]

    # What comes back from the GPU machine: at most 8 files, none deeper, each well under 16 MiB.
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ["device-check.json", "device-check.md", "logs.tar.gz", "profile-trace.json.gz", "profile.md"]
    )
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    assert json.loads(gzip.decompress((out / "profile-trace.json.gz").read_bytes()))["traceEvents"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {"eager/benchmark.json", "gpu-tests/junit.xml", "environment/environment.json"} <= set(names)
    markdown = (out / "device-check.md").read_text()
    assert "DRY run" in markdown and all(f"`{sid}`" in markdown for sid in ALL_STEPS)
    print(f"DRY device check: {wall:.0f} s")


def _run(tmp_path, steps, budget_s=600.0):
    out = tmp_path / "out"
    out.mkdir()
    run = device_check.Run(
        out=out, work=tmp_path / "work", budget_s=budget_s, started=time.time(), dry=True, commit="abc", argv=[]
    )
    return run, device_check.StepRunner(run, steps)


def _step(sid, code, limit_s=60.0, **kw):
    return device_check.Step(sid, "9", sid, "custom", [[sys.executable, "-c", code]], limit_s, **kw)


def test_a_crash_or_a_timeout_leaves_a_valid_report_after_every_step(tmp_path, monkeypatch):
    snapshots = []
    write = device_check.write_report

    def record(run):
        write(run)
        snapshots.append(json.loads((run.out / "device-check.json").read_text()))
        assert (run.out / "device-check.md").read_text().startswith("# Device check")

    monkeypatch.setattr(device_check, "write_report", record)
    hang = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    steps = [
        _step("crash", "import sys; print('boom'); sys.exit(3)"),
        _step("hang", hang + "time.sleep(60)", limit_s=1.5),
        _step("fine", "print('ok')"),
        _step("after-crash", "print('never')", needs=("crash",)),
        _step("too-long", "print('never')", limit_s=10_000),
    ]
    run, runner = _run(tmp_path, steps)
    t0 = time.monotonic()
    assert runner.execute() == 1
    assert time.monotonic() - t0 < 30  # the hung step and its child were stopped at its limit
    final = {s["id"]: s for s in snapshots[-1]["steps"]}
    assert final["crash"]["status"] == "failed" and final["crash"]["returncode"] == 3
    assert "boom" in final["crash"]["log_tail"]
    assert final["hang"]["status"] == "timed out" and final["hang"]["wall_s"] < 15
    assert final["fine"]["status"] == "ok"
    assert final["after-crash"]["status"] == "skipped" and "crash" in final["after-crash"]["reason"]
    assert final["too-long"]["status"] == "skipped" and "past the budget" in final["too-long"]["reason"]
    assert snapshots[-1]["finished"]
    # The report was valid while the hung step ran, and after the crash: a run cut short keeps what it measured.
    running = [s for s in snapshots if any(r["status"] == "running" for r in s["steps"])]
    assert any(next(r for r in s["steps"] if r["id"] == "hang")["status"] == "running" for s in running)
    assert not snapshots[-1]["steps"][0].get("figures")
    with tarfile.open(run.out / "logs.tar.gz") as tar:
        assert "crash/log.txt" in tar.getnames()


def test_steps_are_skipped_when_their_limit_would_pass_the_budget(tmp_path):
    steps = [_step("first", "pass", limit_s=5), _step("second", "pass", limit_s=50), _step("third", "pass", limit_s=5)]
    run, runner = _run(tmp_path, steps, budget_s=30)
    assert runner.execute() == 0
    status = {r["id"]: r["status"] for r in run.records}
    assert status == {"first": "ok", "second": "skipped", "third": "ok"}
    reason = run.records[1]["reason"]
    assert "limit of 50 s" in reason and "budget of 30 s" in reason and "STEPS=environment,second" in reason


def test_an_interrupted_check_marks_the_running_step(tmp_path):
    run, runner = _run(tmp_path, [_step("slow", "import time; time.sleep(60)")])
    run.records[0]["status"] = "running"
    runner.interrupt()
    report = json.loads((run.out / "device-check.json").read_text())
    assert report["steps"][0]["status"] == "interrupted" and not report["finished"]


def test_the_gpu_plan_is_the_issues_sequence():
    steps = device_check.plan_steps(device_check.GPU, "python3", Path("/w"), profile=True)
    ids = [s.id for s in steps]
    assert ids == ALL_STEPS
    by_id = {s.id: " ".join(" ".join(c) for c in s.commands) for s in steps}
    tokens = {s.id: [a for c in s.commands for a in c] for s in steps}
    prompt = device_check.hydra_quote(device_check.PROMPT)
    for sid in ("eager", "graphs", "fastest", "long-budget", "long-unconstrained", "batch", "fresh-cache"):
        command = by_id[sid]
        assert "checkpoint=synthetic-audioldm2 " in command and "device=cuda" in command, sid
        assert "precision=fp16" in command and "steps=20" in command and "scheduler=dpmpp_2m" in command, sid
        assert "guidance_scale=3.5" in command and "'Low quality, average quality.'" in command, sid
        assert prompt in command, sid
    assert "audio_length_s=10.24" in tokens["eager"] and "compile=none" in tokens["eager"]
    assert "benchmark.reference=diffusers" in by_id["eager"] and "benchmark.reference=diffusers" in by_id["fastest"]
    assert "experiment=fastest" in by_id["fastest"] and "compile.cache_dir=/w/compile-cache" in by_id["fastest"]
    # The fast path's two variants: graphs without Inductor vs stock uncompiled; fastest (graphs over Inductor) vs the
    # stock recipe, whose UNet benchmark.reference_compile=auto compiles because ours captures its denoiser.
    assert {"graphs=auto", "graphs.inductor=false", "benchmark.reference_compile=none"} <= set(tokens["graphs"])
    assert "benchmark.reference=diffusers" in tokens["graphs"] and "compile=none" in tokens["graphs"]
    assert not any(t.startswith("benchmark.reference_compile") for t in tokens["fastest"])
    assert "compile.cache_dir=/w/compile-cache" in by_id["fresh-cache"] and "reference" not in by_id["fresh-cache"]
    for sid in ("long-budget", "long-unconstrained"):
        assert "audio_length_s=150" in tokens[sid] and "num_waveforms=4" in tokens[sid]
    assert "memory.budget_gb=4" in tokens["long-budget"]
    assert by_id["large-fastest"].count("checkpoint=synthetic-audioldm2-large") == 1
    batch = next(s for s in steps if s.id == "batch").commands[0][-1]
    assert batch.startswith("prompt=[") and len(set(device_check.BATCH_PROMPTS)) == 16
    words = [len(p.split()) for p in device_check.BATCH_PROMPTS]
    assert max(words) - min(words) <= 3
    # The steps worth most fit the budget when the tests use all of their limit and the others take what they
    # usually do (installation 20 s, environment 15 s, eager 45 s, graphs 25 s).
    limits = device_check.GPU.limits
    assert 20 + 15 + limits["gpu-tests"] + 45 + 25 + limits["fastest"] <= device_check.GPU.budget_s
    assert device_check.GPU.budget_s <= 8 * 60


@pytest.mark.slow
def test_the_gpu_command_lines_compose(tmp_path):
    """Every GPU-only value (checkpoints, fp16, budget, lengths) composes as a config: no typo waits for a GPU."""
    steps = device_check.plan_steps(device_check.GPU, sys.executable, tmp_path)
    env = device_check.step_env()
    for sid in ("graphs", "fastest", "long-budget", "large-eager"):
        command = next(s for s in steps if s.id == sid).commands[0]
        proc = subprocess.run([*command, "--cfg", "job"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (sid, proc.stderr[-2000:])
        assert "checkpoint" in proc.stdout


def _trace():
    """Two kernels, a 100 us device gap, one overlapping kernel on another stream, and their launches."""
    kernel = {"ph": "X", "cat": "kernel", "pid": 0, "tid": 7}
    launch = {"ph": "X", "cat": "cuda_runtime", "pid": 1, "tid": 1, "name": "cudaLaunchKernel", "dur": 3}
    return {
        "traceEvents": [
            {**kernel, "name": "gemm", "ts": 1000, "dur": 50},
            {**kernel, "name": "gemm", "ts": 1060, "dur": 40},
            {**kernel, "name": "softmax", "ts": 1080, "dur": 30, "tid": 8},
            {**kernel, "name": "gemm", "ts": 1210, "dur": 50},
            {"ph": "X", "cat": "gpu_memcpy", "pid": 0, "tid": 7, "name": "Memcpy HtoD", "ts": 900, "dur": 20},
            {**launch, "ts": 990},
            {**launch, "ts": 995},
            {**launch, "ts": 1001, "name": "cudaGraphLaunch"},
            {"ph": "X", "cat": "cuda_runtime", "pid": 1, "tid": 1, "name": "cudaStreamSynchronize", "ts": 1, "dur": 9},
            {"ph": "X", "cat": "cpu_op", "pid": 1, "tid": 1, "name": "aten::mm", "ts": 980, "dur": 30},
            {"ph": "s", "cat": "ac2g", "id": 1, "pid": 1, "tid": 1, "ts": 990},
        ]
    }


def test_profile_analysis_of_a_cuda_trace():
    a = device_profile.analyze(_trace())
    assert a["device"] == "cuda" and a["kernels"] == 5 and a["launches"] == 3
    # busy: [900, 920] + [1000, 1050] + [1060, 1110] (overlapping kernels merged) + [1210, 1260]
    assert a["busy_us"] == pytest.approx(20 + 50 + 50 + 50)
    assert a["span_us"] == pytest.approx(360) and a["idle_us"] == pytest.approx(190)
    assert a["largest_gaps_us"] == pytest.approx([100, 80, 10]) and a["gaps_over_10us"] == 2
    assert a["top_kernels"][0]["name"] == "gemm" and a["top_kernels"][0]["calls"] == 3
    assert a["top_kernels"][0]["total_ms"] == pytest.approx(0.14)
    short = device_profile.analyze({"traceEvents": _trace()["traceEvents"][:2]})
    step = device_profile.per_step(a, short, steps=20, delta_steps=10)
    assert step["kernels_per_step"] == pytest.approx(0.3) and step["launches_per_step"] == pytest.approx(0.3)


def test_profile_analysis_of_a_cpu_trace():
    op = {"ph": "X", "cat": "cpu_op", "pid": 1, "tid": 1}
    trace = {
        "traceEvents": [
            {**op, "name": "aten::linear", "ts": 0, "dur": 100},
            {**op, "name": "aten::addmm", "ts": 10, "dur": 80},
            {**op, "name": "aten::empty", "ts": 12, "dur": 5},
            {**op, "name": "aten::relu", "ts": 150, "dur": 20},
        ]
    }
    a = device_profile.analyze(trace)
    assert a["device"] == "cpu" and a["kernels"] == 2 and a["launches"] == 2  # leaves empty, relu; top linear, relu
    assert a["busy_us"] == 120 and a["idle_us"] == 50 and a["largest_gaps_us"] == [50]
    self_times = {k["name"]: k["total_ms"] * 1e3 for k in a["top_kernels"]}
    assert self_times == pytest.approx({"aten::addmm": 75, "aten::linear": 20, "aten::relu": 20, "aten::empty": 5})


def test_a_large_trace_is_trimmed_to_its_cap():
    trace = _trace()
    op = {"ph": "X", "cat": "cpu_op", "pid": 1, "tid": 1, "dur": 1}
    trace["traceEvents"] += [
        {**op, "name": f"aten::op{i}", "ts": 2000 + i, "args": {"i": str(i) * 20}} for i in range(20000)
    ]
    full, dropped = device_profile.capped_trace(trace, cap_bytes=10**9)
    assert dropped == []
    data, dropped = device_profile.capped_trace(trace, cap_bytes=len(full) // 10)
    assert len(data) <= len(full) // 10 and dropped
    kept = json.loads(gzip.decompress(data))["traceEvents"]
    assert sum(e.get("cat") == "kernel" for e in kept) == 4  # device events are what is kept longest


def _gpu_report(tmp_path, started="2026-12-01T10:00:00+0000"):
    run = tmp_path / f"run-{started[:10]}-{len(list(tmp_path.iterdir()))}"
    run.mkdir()
    fig = {"e2e_median_s": 0.4, "ours_over_stock": 0.8, "stock": {"e2e_median_s": 0.5, "clips_per_s": 10.0}}
    steps = [
        {"id": "gpu-tests", "status": "ok", "figures": {"passed": 11, "failed": 0, "error": 0, "skipped": 0}},
        {"id": "eager", "status": "ok", "figures": {**fig, "equivalent": True}},
        {"id": "fastest", "status": "ok", "figures": {**fig, "first_call_s": 130.0}},
        {
            "id": "long-budget",
            "status": "ok",
            "figures": {"peak_allocated_mb": 3686.4, "e2e_median_s": 9.1, "memory_plan": {"estimated_peak_gib": 3.9}},
        },
        {"id": "long-unconstrained", "status": "timed out", "figures": {}},
        {"id": "batch", "status": "ok", "figures": {**fig, "clips_per_s": 12.5}},
        {"id": "fresh-cache", "status": "skipped", "figures": {}},
    ]
    report = {
        "kind": "device-check",
        "dry": False,
        "started": started,
        "commit": "0123456789abcdef",
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0"},
        "steps": steps,
    }
    (run / "device-check.json").write_text(json.dumps(report))
    (run / "device-check.md").write_text("# Device check: NVIDIA H200\n")
    return run


def test_results_are_published_and_the_readme_table_rebuilt(tmp_path):
    bench, readme = tmp_path / "benchmarks", tmp_path / "README.md"
    readme.write_text(f"intro\n{device_results.BEGIN}\nold\n{device_results.END}\nafter\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    first = _gpu_report(runs)
    assert device_results.main([str(first), "--benchmarks", str(bench), "--readme", str(readme)]) == 0
    assert (bench / "2026-12-01-nvidia-h200.json").exists() and (bench / "2026-12-01-nvidia-h200.md").exists()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    row = next(line for line in text.splitlines() if "NVIDIA H200" in line)
    assert "0.400 s vs 0.500 s (1.25x, equivalent)" in row and "3.6 GiB (est. 3.9), 9.10 s" in row
    assert "timed out" in row and "skipped" in row and "12.50 vs 10.00" in row and "11 passed, 0 failed" in row
    assert "[2026-12-01-nvidia-h200](benchmarks/2026-12-01-nvidia-h200.md)" in row
    device_results.main([str(first), "--benchmarks", str(bench), "--readme", str(readme)])  # the same run: kept once
    second = _gpu_report(runs)
    data = json.loads((second / "device-check.json").read_text())
    data["commit"] = "fedcba9876543210"
    (second / "device-check.json").write_text(json.dumps(data))
    device_results.main([str(second), "--benchmarks", str(bench), "--readme", str(readme)])
    assert sorted(p.name for p in bench.glob("*.json")) == [
        "2026-12-01-nvidia-h200-2.json",
        "2026-12-01-nvidia-h200.json",
    ]
    assert readme.read_text().count("NVIDIA H200 |") == 2


def test_a_dry_run_is_never_published(tmp_path):
    run = _gpu_report(tmp_path)
    data = json.loads((run / "device-check.json").read_text())
    (run / "device-check.json").write_text(json.dumps({**data, "dry": True}))
    with pytest.raises(SystemExit, match="DRY"):
        device_results.publish(run, tmp_path / "benchmarks")
    assert not (tmp_path / "benchmarks").exists()


def test_the_readme_table_matches_the_kept_results():
    """The README shows exactly the GPU runs in benchmarks/ ("no GPU run recorded yet" until one is kept)."""
    text = (ROOT / "README.md").read_text()
    block = text.split(device_results.BEGIN, 1)[1].split(device_results.END, 1)[0].strip()
    assert block == device_results.results_table(device_results.collected(BENCHMARKS))


def test_recorded_command_lines_run_as_written():
    args = ["python", "-m", "x", "prompt='a, b'", "path=/tmp/a b", 'q="x"', "v=$HOME", "prompt=['a','b c']", "ok=1"]
    line = device_check.shell_join(args)
    assert shlex.split(line) == args and "\"prompt='a, b'\"" in line
