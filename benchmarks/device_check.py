"""``make device-check``: every GPU claim of the README measured by one prepared command, in a few minutes of GPU time.

A GPU machine is lent now and then for about 15 minutes, start-up included. This script spends such a window on the
measurements in order of value, each one a separate process with its own time limit, so that a hang or a crash in
one step loses nothing that the others measured. After every step it rewrites ``device-check.json``,
``device-check.md`` and ``logs.tar.gz`` in ``--out``; a run cut short still leaves what it had measured. A step whose
limit would end past the budget is skipped, with the reason in the report.

It drives the package only through its command line (``task=benchmark`` writes ``benchmark.json``) and, for the
profile, through ``Generator``. ``--dry`` runs the same sequence on the CPU with the tiny checkpoint and small sizes,
so that a GPU run can fail only for GPU reasons. ``benchmarks/README.md`` says how each figure is obtained.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
PROMPT = "The sound of Brazilian samba drums with waves gently crashing in the background"
NEGATIVE_PROMPT = "Low quality, average quality."
# Sixteen distinct prompts of about the founding prompt's length (13 to 15 words), for the throughput step.
BATCH_PROMPTS = [
    PROMPT,
    "A heavy thunderstorm with rolling thunder and rain pouring onto a metal roof at night",
    "A jazz trio with upright bass, brushed drums and soft piano in a small club",
    "Birds singing at dawn in a dense forest while a stream flows over rocks",
    "A busy city street with car horns, footsteps and people talking near a cafe terrace",
    "An old steam train leaving the station with its whistle blowing and wheels clattering",
    "A crackling campfire with wood popping and crickets chirping in the warm summer night",
    "Gentle acoustic guitar strumming with a soft male voice humming a slow folk melody",
    "Waves crashing against the cliffs while seagulls call above a windy northern harbour",
    "A crowded football stadium cheering loudly as the home team scores a late winning goal",
    "Electronic dance music with a deep bass line, bright synth chords and a steady kick",
    "A church organ playing a solemn hymn that echoes through a large stone cathedral",
    "Rain falling on leaves in a tropical jungle with frogs croaking and distant thunder",
    "A marching band with brass horns, snare drums and cymbals parading down a wide street",
    "A quiet library with pages turning, a clock ticking and someone typing on a keyboard",
    "Children laughing on a playground while a dog barks somewhere in the distance",
]
STATUSES = ("pending", "running", "ok", "failed", "timed out", "skipped", "interrupted")
REPORT_JSON, REPORT_MD, LOGS_ARCHIVE = "device-check.json", "device-check.md", "logs.tar.gz"
PROFILE_TRACE, PROFILE_MD = "profile-trace.json.gz", "profile.md"
ARCHIVE_FILE_CAP = 2 * 2**20  # bytes of one log kept in logs.tar.gz (its tail); the machine returns 16 MiB per file
TAIL_LINES = 40


def hydra_quote(text: str) -> str:
    """A Hydra override value that keeps commas, spaces and quotes as written."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Sizes:
    """What one mode (GPU or DRY) runs: checkpoints, lengths, steps, repetitions and step limits."""

    device: str
    checkpoint: str
    large_checkpoint: str | None
    half: str  # the precision of the "fp16" steps (fp32 on the CPU, which refuses fp16)
    audio_length_s: float
    steps: int
    long_length_s: float
    long_waveforms: int
    long_budget_gb: float
    batch_prompts: int
    profile_steps: int
    eager_runs: tuple[int, int]  # (warmup, runs)
    fastest_runs: tuple[int, int]
    long_runs: tuple[int, int]
    batch_runs: tuple[int, int]
    fresh_runs: tuple[int, int]
    limits: dict[str, float]
    budget_s: float


# Limits on the GPU, in seconds. Compiling the full-size UNet with reduce-overhead took 110-150 s on an H100, and the
# stock recipe compiles its own copy: `fastest` holds two compiles. The defaults fit the order of value into 8 minutes
# when the early steps take what they usually do; every limit can be changed with --limit ID=SECONDS.
GPU = Sizes(
    device="cuda",
    checkpoint="synthetic-audioldm2",
    large_checkpoint="synthetic-audioldm2-large",
    half="fp16",
    audio_length_s=10.24,
    steps=20,
    long_length_s=150.0,
    long_waveforms=4,
    long_budget_gb=4.0,
    batch_prompts=16,
    profile_steps=20,
    eager_runs=(1, 3),
    fastest_runs=(2, 5),
    long_runs=(1, 2),
    batch_runs=(1, 2),
    fresh_runs=(1, 1),
    limits={
        "environment": 60,
        "gpu-tests": 90,
        "eager": 90,
        "graphs": 60,
        "fastest": 280,
        "profile": 240,
        "long-budget": 120,
        "long-unconstrained": 100,
        "batch": 90,
        "fresh-cache": 150,
        "large-eager": 100,
        "large-graphs": 100,
        "large-fastest": 360,
        "large-long-budget": 120,
        "large-long-unconstrained": 110,
    },
    budget_s=480,
)
# The CPU run: the tiny checkpoint, 1.28 s of audio, 2 steps, one warm-up and one timed run. Generous limits, since
# the 2-core machines it runs on are shared.
DRY = Sizes(
    device="cpu",
    checkpoint="tiny",
    large_checkpoint=None,
    half="fp32",
    audio_length_s=1.28,
    steps=2,
    long_length_s=2.56,
    long_waveforms=2,
    long_budget_gb=0.018,
    batch_prompts=2,
    profile_steps=4,
    eager_runs=(1, 1),
    fastest_runs=(1, 1),
    long_runs=(1, 1),
    batch_runs=(1, 1),
    fresh_runs=(1, 1),
    limits={
        "environment": 120,
        "gpu-tests": 180,
        "eager": 180,
        "graphs": 180,
        "fastest": 180,
        "profile": 180,
        "long-budget": 180,
        "long-unconstrained": 180,
        "batch": 180,
        "fresh-cache": 180,
    },
    budget_s=1500,
)


@dataclass
class Step:
    """One measurement: its commands run one after the other in ``dir``, within ``limit_s`` in all."""

    id: str
    group: str  # the issue's step number: 1 environment ... 7 the large model
    title: str
    kind: str  # environment | pytest | benchmark | profile | custom
    commands: list[list[str]]
    limit_s: float
    # Steps of which one must have succeeded earlier in this run (fresh-cache needs a process that filled the cache).
    needs: tuple[str, ...] = ()
    skip_reason: str | None = None  # skipped by design in this mode
    dir: Path | None = None


@dataclass
class Run:
    """The report being written: settings, environment and every step's record."""

    out: Path
    work: Path
    budget_s: float
    started: float
    dry: bool
    commit: str
    argv: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def elapsed(self) -> float:
        return time.time() - self.started


# --------------------------------------------------------------------------------------------------- the steps


def _benchmark_overrides(sizes: Sizes, checkpoint: str, warmup_runs: tuple[int, int], *extra: str) -> list[str]:
    warmup, runs = warmup_runs
    return [
        "task=benchmark",
        f"checkpoint={checkpoint}",
        f"device={sizes.device}",
        "scheduler=dpmpp_2m",
        f"steps={sizes.steps}",
        "guidance_scale=3.5",
        f"audio_length_s={sizes.audio_length_s:g}",
        f"prompt={hydra_quote(PROMPT)}",
        f"negative_prompt={hydra_quote(NEGATIVE_PROMPT)}",
        "seed=0",
        "progress=false",
        f"benchmark.warmup={warmup}",
        f"benchmark.runs={runs}",
        *extra,
    ]


def plan_steps(sizes: Sizes, python: str, work: Path, *, profile: bool = False) -> list[Step]:
    """The sequence in order of value. Every benchmark step is one ``python -m audioldm2_fast task=benchmark``."""
    cli = [python, "-m", "audioldm2_fast"]
    half, reference = f"precision={sizes.half}", "benchmark.reference=diffusers"
    cache = f"compile.cache_dir={work / 'compile-cache'}"
    long = (f"audio_length_s={sizes.long_length_s:g}", f"num_waveforms={sizes.long_waveforms}")
    prompts = BATCH_PROMPTS[: sizes.batch_prompts]
    gpu_tests = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text()
    )

    def bench(sid: str, group: str, title: str, runs: tuple[int, int], *extra: str, checkpoint: str = "") -> Step:
        command = cli + _benchmark_overrides(sizes, checkpoint or sizes.checkpoint, runs, *extra)
        return Step(sid, group, title, "benchmark", [command], sizes.limits.get(sid, 0))

    def model_steps(checkpoint: str, label: str = "") -> list[Step]:
        on, (group, long_group) = (f" on {checkpoint}", "77") if label else ("", "34")
        length = f"{sizes.long_waveforms} x {sizes.long_length_s:g} s"
        return [
            bench(
                f"{label}eager",
                group,
                f"eager {sizes.half}, ours vs stock{on}",
                sizes.eager_runs,
                half,
                "compile=none",
                reference,
                checkpoint=checkpoint,
            ),
            # The fast path without Inductor: every stage captured as CUDA graphs over eager kernels (a first call of
            # seconds), against the stock pipeline uncompiled. On the CPU graphs=auto captures nothing: the DRY run
            # covers the same code's CPU side (static cache, precomputed solver, tensor-only stage methods).
            bench(
                f"{label}graphs",
                group,
                f"graphs over eager kernels (no Inductor), {sizes.half}, vs stock uncompiled{on}",
                sizes.eager_runs,
                half,
                "compile=none",
                "graphs=auto",
                "graphs.inductor=false",
                "benchmark.reference_compile=none",
                reference,
                checkpoint=checkpoint,
            ),
            bench(
                f"{label}fastest",
                group,
                f"experiment=fastest (graphs over Inductor) vs the stock recipe (compiled UNet){on}",
                sizes.fastest_runs,
                "experiment=fastest",
                half,
                cache,
                reference,
                checkpoint=checkpoint,
            ),
            bench(
                f"{label}long-budget",
                long_group,
                f"{length}, memory.budget_gb={sizes.long_budget_gb:g}{on}",
                sizes.long_runs,
                half,
                "compile=none",
                *long,
                f"memory.budget_gb={sizes.long_budget_gb:g}",
                checkpoint=checkpoint,
            ),
            # A budget that no call reaches: the planner takes no step, so the settings stay the defaults, and it
            # records its estimate beside the measured peak.
            bench(
                f"{label}long-unconstrained",
                long_group,
                f"{length}, unconstrained{on}",
                sizes.long_runs,
                half,
                "compile=none",
                *long,
                "memory.budget_gb=100000",
                checkpoint=checkpoint,
            ),
        ]

    pytest = [python, "-m", "pytest", "-m", "gpu", *(gpu_tests or ["tests"]), "-v", "-rfEs", "-p", "no:cacheprovider"]
    probe = [python, str(Path(__file__).resolve()), "--probe", "{dir}/environment.json"]
    steps = [
        Step(
            "environment",
            "1",
            "environment: GPU, driver, CUDA, versions, commit; task=doctor",
            "environment",
            [probe, [*cli, "task=doctor"]],
            sizes.limits["environment"],
        ),
        Step(
            "gpu-tests",
            "2",
            "the gpu-marked tests",
            "pytest",
            [[*pytest, "--timeout=60", "--junitxml={dir}/junit.xml"]],
            sizes.limits["gpu-tests"],
        ),
    ]
    main = model_steps(sizes.checkpoint)
    steps += main[:3]
    if profile:
        generator = [
            o
            for o in _benchmark_overrides(sizes, sizes.checkpoint, (0, 1), "experiment=fastest", half, cache)
            if not o.startswith(("task=", "benchmark.", "steps="))  # the profile sets the steps of each call
        ]
        script = str(Path(__file__).resolve().parent / "device_profile.py")
        steps.append(
            Step(
                "profile",
                "P",
                f"torch.profiler over one {sizes.profile_steps}-step clip of experiment=fastest",
                "profile",
                [[python, script, "--out", "{dir}", "--steps", str(sizes.profile_steps), "--", *generator]],
                sizes.limits["profile"],
            )
        )
    steps += main[3:]
    steps.append(
        bench(
            "batch",
            "5",
            f"{len(prompts)} prompts in one call, eager {sizes.half}, ours vs stock",
            sizes.batch_runs,
            half,
            "compile=none",
            reference,
            "benchmark.fp32_check=false",
            "prompt=[" + ",".join(hydra_quote(p) for p in prompts) + "]",
        )
    )
    fresh = bench(
        "fresh-cache",
        "6",
        "a fresh process's first call on the compile cache that fastest (or profile) filled",
        sizes.fresh_runs,
        "experiment=fastest",
        half,
        cache,
    )
    fresh.needs = ("fastest", "profile")
    steps.append(fresh)
    large = model_steps(sizes.large_checkpoint or "synthetic-audioldm2-large", "large-")
    if not sizes.large_checkpoint:
        for step in large:
            step.skip_reason = "a DRY run has no large model: the GPU run measures it when time is left"
    return steps + large


# ------------------------------------------------------------------------------------------------ the figures


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def benchmark_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The key figures of one ``benchmark.json``: ours and stock medians, ratio, first calls, memory, equivalence."""
    s = report["settings"]
    clips = int(s["prompts"]) * int(s["num_waveforms"])
    median = report["e2e_s"]["median"]
    figures: dict[str, Any] = {
        "device": report["device"],
        "versions": report.get("versions", {}),
        "settings": {k: s[k] for k in ("checkpoint", "precision", "attention", "compile", "offload", "scheduler")},
        "steps": s["steps"],
        "prompts": s["prompts"],
        "num_waveforms": s["num_waveforms"],
        "audio_length_s": s["audio_length_s"],
        "memory_settings": s.get("memory", {}),
        "warmup": report["warmup"],
        "runs": len(report["runs"]),
        "load_s": report["load_s"],
        "first_call_s": report["first_call_s"],
        "e2e_median_s": median,
        "e2e_min_s": report["e2e_s"]["min"],
        "e2e_max_s": report["e2e_s"]["max"],
        "stages_median_s": {name: st["median"] for name, st in report["stages_s"].items()},
        "x_realtime": report["x_realtime"],
        "clips": clips,
        "clips_per_s": clips / median,
        "peak_rss_mb": report["peak_rss_mb"],
    }
    if report.get("denoiser_steps_per_s") is not None:
        figures["denoiser_steps_per_s"] = report["denoiser_steps_per_s"]
    for key in ("peak_allocated_mb", "peak_reserved_mb"):
        if key in report:
            figures[key] = report[key]
    plan = report.get("memory_plan")
    if plan:
        figures["memory_plan"] = {
            k: plan[k] for k in ("budget_gb", "steps", "settings", "offload", "estimated_peak_gib") if k in plan
        }
        if "peak_allocated_mb" in report and plan.get("estimated_peak_gib"):
            figures["peak_allocated_over_estimate"] = report["peak_allocated_mb"] / 1024 / plan["estimated_peak_gib"]
    ref = report.get("reference")
    if ref:
        stock_median = ref["e2e_s"]["median"]
        stock: dict[str, Any] = {
            "e2e_median_s": stock_median,
            "e2e_min_s": ref["e2e_s"]["min"],
            "first_call_s": ref["first_call_s"],
            "clips_per_s": clips / stock_median,
            "notes": ref.get("notes", []),
        }
        peaks = [r["peak_allocated_mb"] for r in ref.get("runs", []) if "peak_allocated_mb" in r]
        if peaks:
            stock["peak_allocated_mb"] = max(peaks)
        figures["stock"] = stock
        figures["ours_over_stock"] = ref["ratio_median"]
        figures["speedup"] = 1 / ref["ratio_median"]
        figures["max_abs_diff"] = ref["max_abs_diff"]
        for key in ("equivalent", "stock_vs_stock_fp32_max_abs_diff", "ours_vs_stock_fp32_max_abs_diff"):
            if key in ref:
                figures[key] = ref[key]
    return figures


_PYTEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", re.M)


def pytest_figures(step_dir: Path, log: str) -> dict[str, Any]:
    """Per-test outcomes from the JUnit XML (or, when the step was cut short, from the verbose log)."""
    import xml.etree.ElementTree as ET

    tests: list[dict[str, Any]] = []
    junit = step_dir / "junit.xml"
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome, message = (
                        {"failure": "failed", "error": "error", "skipped": "skipped"}[tag],
                        node.get("message", ""),
                    )
            tests.append(
                {
                    "name": f"{case.get('classname', '')}::{case.get('name', '')}",
                    "outcome": outcome,
                    "time_s": float(case.get("time") or 0.0),
                    **({"message": message[:200]} if message else {}),
                }
            )
    else:
        tests = [{"name": name, "outcome": outcome.lower()} for name, outcome in _PYTEST_LINE.findall(log)]
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "tests": tests, "source": "junit" if junit.exists() else "log"}


def environment_probe() -> dict[str, Any]:
    """GPU name, memory, driver, CUDA and library versions, in the process that the steps also run in."""
    import importlib
    import importlib.metadata as md

    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count()}
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    for name, module in (("diffusers", "diffusers"), ("transformers", "transformers")):
        try:
            mod = importlib.import_module(module)
            info[name] = mod.__version__
            info[f"{name}_from"] = str(Path(mod.__file__).parent.parent)
        except Exception as exc:  # recorded, not raised: a missing package is what this step is there to show
            info[name] = f"missing: {type(exc).__name__}: {exc}"
    for dist in ("hydra-core", "omegaconf", "accelerate", "numpy", "triton", "soundfile", "huggingface-hub"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name") and ":" in line
        ),
        platform.processor() or platform.machine(),
    )
    info["cpu"] = cpu
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = props.total_memory / 2**30
        info["capability"] = f"{props.major}.{props.minor}"
        info["multiprocessors"] = props.multi_processor_count
        info["gpu_count"] = torch.cuda.device_count()
        info["driver"] = _nvidia_smi("driver_version")
    else:
        info["gpu"] = None
    return info


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _nvidia_smi(field_name: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _first_ok(run: Run, ids: Sequence[str]) -> dict[str, Any] | None:
    return next((r for r in run.records if r["id"] in ids and r["status"] == "ok"), None)


def collect_figures(step: Step, record: dict[str, Any], run: Run) -> None:
    """Read what a finished step wrote into its dir; a step that wrote nothing usable has failed."""
    assert step.dir is not None
    log = (step.dir / "log.txt").read_text(errors="replace") if (step.dir / "log.txt").exists() else ""
    if step.kind == "environment":
        probe = step.dir / "environment.json"
        if probe.exists():
            run.environment = json.loads(probe.read_text())
            run.environment["commit"] = run.commit
            record["figures"] = dict(run.environment)
    elif step.kind == "pytest":
        record["figures"] = pytest_figures(step.dir, log)
        if record["status"] == "failed" and record.get("returncode") == 5:  # nothing collected
            record["status"], record["reason"] = "skipped", "no gpu-marked test was collected"
    elif step.kind == "benchmark":
        reports = sorted(step.dir.glob("benchmark*.json"), key=lambda p: p.stat().st_mtime)
        if reports:
            figures = benchmark_figures(json.loads(reports[-1].read_text()))
            before = _first_ok(run, step.needs)
            if before and _finite(before.get("figures", {}).get("first_call_s")):
                figures[f"first_call_s_in_{before['id']}"] = before["figures"]["first_call_s"]
            record["figures"] = figures
        elif record["status"] == "ok":
            record["status"], record["reason"] = "failed", "the command wrote no benchmark.json"
    elif step.kind == "profile":
        summary = step.dir / "profile.json"
        if summary.exists():
            record["figures"] = json.loads(summary.read_text())
            for name in (PROFILE_TRACE, PROFILE_MD):
                if (step.dir / name).exists():
                    shutil.copyfile(step.dir / name, run.out / name)
        elif record["status"] == "ok":
            record["status"], record["reason"] = "failed", "the profile wrote no profile.json"


# ----------------------------------------------------------------------------------------------- running steps


_SAFE = re.compile(r"^[\w@%+=:,./-]+$")


def shell_join(args: Sequence[str]) -> str:
    """A command line to copy into a shell, quoted for reading: ``"prompt='a b'"`` rather than shlex's nesting."""
    words = []
    for arg in args:
        if _SAFE.match(arg):
            words.append(arg)
        elif not any(c in arg for c in '"$`\\!'):
            words.append(f'"{arg}"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End a step's whole process group (a compile's worker processes too): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def step_env() -> dict[str, str]:
    """The environment of every step: this checkout's ``src`` first, unbuffered output, no network, no progress bars."""
    env = dict(os.environ)
    src = str(ROOT / "src")
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        parts.insert(0, src)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class StepRunner:
    """Runs a plan: skips what would overrun the budget, times out what overruns its limit, reports after each."""

    def __init__(self, run: Run, steps: Sequence[Step], selected: set[str] | None = None):
        self.run = run
        self.steps = list(steps)
        self.selected = selected
        self.current: subprocess.Popen | None = None
        run.records = [self._record(step) for step in self.steps]

    @staticmethod
    def _record(step: Step) -> dict[str, Any]:
        return {
            "id": step.id,
            "group": step.group,
            "title": step.title,
            "status": "pending",
            "limit_s": step.limit_s,
            "commands": [shell_join(c) for c in step.commands],
            "figures": {},
        }

    def _skip_reason(self, step: Step) -> str | None:
        run = self.run
        if step.skip_reason:
            return step.skip_reason
        if self.selected is not None and step.id not in self.selected:
            return f"not selected (steps: {', '.join(sorted(self.selected))})"
        if step.needs and _first_ok(run, step.needs) is None:
            states = [f"{r['id']} {r['status']}" for r in run.records if r["id"] in step.needs]
            return f"needs {' or '.join(step.needs)} to succeed first in this run ({', '.join(states) or 'not run'})"
        elapsed = run.elapsed()
        if elapsed + step.limit_s > run.budget_s:
            return (
                f"its limit of {step.limit_s:.0f} s would end at {elapsed + step.limit_s:.0f} s, past the budget of "
                f"{run.budget_s:.0f} s ({elapsed:.0f} s used); run it in another window with "
                f"STEPS=environment,{step.id}"
            )
        return None

    def execute(self) -> int:
        """Run every step in order; return 0 when none failed or timed out."""
        write_report(self.run)
        for step, record in zip(self.steps, self.run.records, strict=True):
            reason = self._skip_reason(step)
            if reason:
                record.update(status="skipped", reason=reason)
                write_report(self.run)
                continue
            self._run_step(step, record)
            write_report(self.run)
        self.run.finished = True
        write_report(self.run)
        return 1 if any(r["status"] in ("failed", "timed out", "interrupted") for r in self.run.records) else 0

    def _run_step(self, step: Step, record: dict[str, Any]) -> None:
        run = self.run
        step.dir = run.work / step.id
        if step.dir.exists():
            shutil.rmtree(step.dir)
        step.dir.mkdir(parents=True)
        commands = [[a.replace("{dir}", str(step.dir)) for a in c] for c in step.commands]
        if step.kind == "benchmark":
            commands = [[*c, f"hydra.run.dir={step.dir}", f"output.dir={step.dir}"] for c in commands]
        record.update(
            status="running",
            started_at=run.elapsed(),
            commands=[shell_join(c) for c in commands],
            log=f"{step.id}/log.txt",
        )
        write_report(run)
        t0 = time.monotonic()
        status, returncode, failed_code = "ok", 0, None
        with open(step.dir / "log.txt", "wb") as log:
            for command in commands:
                left = step.limit_s - (time.monotonic() - t0)
                log.write(f"$ {shell_join(command)}\n".encode())
                log.flush()
                if left <= 0:
                    status = "timed out"
                    break
                self.current = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=step_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    returncode = self.current.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    _kill_group(self.current)
                    status, returncode = "timed out", self.current.returncode
                    break
                finally:
                    self.current = None
                if returncode != 0:
                    status, failed_code = "failed", failed_code if failed_code is not None else returncode
                    if step.kind != "environment":  # the probe and the doctor are both worth having
                        break
        if failed_code is not None and status == "failed":
            returncode = failed_code
        record.update(status=status, returncode=returncode, wall_s=time.monotonic() - t0)
        if status == "timed out":
            record["reason"] = f"ran past its limit of {step.limit_s:.0f} s and was stopped"
        elif status == "failed":
            record["reason"] = f"exit code {returncode}"
        try:
            collect_figures(step, record, run)
        except Exception as exc:  # a malformed output must not lose the report
            record.update(status="failed", reason=f"cannot read its results: {type(exc).__name__}: {exc}")
        if record["status"] != "ok":
            record["log_tail"] = _tail(step.dir / "log.txt")

    def interrupt(self) -> None:
        """On SIGTERM/SIGINT: stop the running step, mark it, and leave a valid report."""
        if self.current is not None:
            _kill_group(self.current, grace_s=2.0)
        for record in self.run.records:
            if record["status"] == "running":
                record.update(status="interrupted", reason="the check itself was stopped")
        write_report(self.run)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------- the report


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def report_dict(run: Run) -> dict[str, Any]:
    return {
        "kind": "device-check",
        "schema": SCHEMA,
        "dry": run.dry,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.started)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": run.elapsed(),
        "budget_s": run.budget_s,
        "finished": run.finished,
        "commit": run.commit,
        "argv": run.argv,
        "out": str(run.out),
        "work": str(run.work),
        "environment": run.environment,
        "steps": run.records,
    }


def write_report(run: Run) -> None:
    """Rewrite the JSON, the Markdown and the logs archive; each replaces the last atomically."""
    report = report_dict(run)
    _atomic_write(run.out / REPORT_JSON, (json.dumps(report, indent=2, default=str) + "\n").encode())
    _atomic_write(run.out / REPORT_MD, render_markdown(report).encode())
    _write_archive(run)


def _write_archive(run: Run) -> None:
    """Step logs, benchmark.json files, JUnit XML and the profile summary, one archive (the machine returns 8 files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for record in run.records:
            step_dir = run.work / record["id"]
            if not step_dir.is_dir() or record["status"] in ("pending", "skipped"):
                continue
            for path in sorted(step_dir.rglob("*")):
                if not path.is_file() or path.suffix not in (".txt", ".json", ".xml", ".log", ".md", ".yaml"):
                    continue
                data = path.read_bytes()
                if len(data) > ARCHIVE_FILE_CAP:
                    data = b"[... cut: the last 2 MiB follow ...]\n" + data[-ARCHIVE_FILE_CAP:]
                info = tarfile.TarInfo(str(path.relative_to(run.work)))
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
    _atomic_write(run.out / LOGS_ARCHIVE, buf.getvalue())


def _s(value: Any, digits: int = 3) -> str:
    if not _finite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _gib(mb: Any) -> str:
    return f"{mb / 1024:.2f} GiB" if _finite(mb) else "-"


def summarize(record: dict[str, Any]) -> str:
    """One line of the key figures of a step, for the table."""
    f = record.get("figures") or {}
    if not f:
        return record.get("reason", "")
    rid = record["id"]
    if rid == "environment":
        gpu = f.get("gpu") or f"no GPU ({f.get('cpu', 'CPU')})"
        memory = f" {f['gpu_memory_gib']:.1f} GiB," if _finite(f.get("gpu_memory_gib")) else ""
        return (
            f"{gpu},{memory} driver {f.get('driver') or '-'}, CUDA {f.get('cuda') or '-'}, torch {f.get('torch')}, "
            f"diffusers {f.get('diffusers')}, transformers {f.get('transformers')}, python {f.get('python')}"
        )
    if "tests" in f:
        text = f"{f['passed']} passed, {f['failed']} failed, {f['error']} errors, {f['skipped']} skipped"
        failed = [t["name"].rsplit("::", 1)[-1] for t in f["tests"] if t["outcome"] in ("failed", "error")]
        skipped = {t.get("message", "") for t in f["tests"] if t["outcome"] == "skipped"}
        if failed:
            text += f" ({', '.join(failed[:4])})"
        elif skipped and not f["passed"]:
            text += f" ({'; '.join(sorted(m for m in skipped if m))[:80]})"
        return text
    if "kernels_per_step" in f:
        kernels, launches = ("kernels", "launches") if f.get("device") == "cuda" else ("leaf ops", "top-level ops")
        return (
            f"per step: {_s(f.get('device_ms_per_step'))} ms busy on {f.get('device')}, "
            f"{_s(f['kernels_per_step'], 0)} {kernels}, {_s(f.get('launches_per_step'), 0)} {launches}; "
            f"idle {_s(100 * f.get('idle_fraction', float('nan')), 1)}% of the call's span (see {PROFILE_MD})"
        )
    parts = [f"ours {_s(f.get('e2e_median_s'))} s"]
    stock = f.get("stock")
    if stock:
        parts.append(f"stock {_s(stock.get('e2e_median_s'))} s")
        speedup = f.get("speedup", float("nan"))
        pace = f"{_s(speedup, 2)}x faster" if speedup >= 1 else f"{_s(1 / speedup, 2)}x slower"
        parts.append(f"{pace} (ours/stock {_s(f.get('ours_over_stock'))})")
    if f.get("clips", 1) > 1:
        clips = f"{_s(f.get('clips_per_s'), 2)} clips/s"
        if stock:
            clips += f" vs {_s(stock.get('clips_per_s'), 2)}"
        parts.append(clips)
    if "equivalent" in f:
        verdict = "equivalent" if f["equivalent"] else "NOT equivalent"
        parts.append(
            f"{verdict} ({_s(f.get('max_abs_diff'))} vs stock fp32 {_s(f['stock_vs_stock_fp32_max_abs_diff'])})"
        )
    elif "max_abs_diff" in f:
        parts.append(f"max abs diff {f['max_abs_diff']:.1e}")
    first = f"first call {_s(f.get('first_call_s'), 2)} s"
    if stock:
        first += f" / stock {_s(stock.get('first_call_s'), 2)} s"
    for key, value in f.items():
        if key.startswith("first_call_s_in_"):
            first += f" (in {key.removeprefix('first_call_s_in_')}: {_s(value, 2)} s)"
    parts.append(first)
    parts.append(f"load {_s(f.get('load_s'), 2)} s")
    if "peak_allocated_mb" in f:
        parts.append(f"peak {_gib(f['peak_allocated_mb'])} allocated")
    plan = f.get("memory_plan")
    if plan:
        parts.append(f"estimated peak {_s(plan.get('estimated_peak_gib'), 2)} GiB (plan: {plan.get('steps')})")
    return "; ".join(parts)


def render_markdown(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    where = env.get("gpu") or ("CPU" if env else "unknown device")
    lines = [f"# Device check: {where}, {report['started'][:16].replace('T', ' ')}", ""]
    if report["dry"]:
        lines += [
            "DRY run: the CPU, the tiny checkpoint and small sizes. It checks the sequence and its reporting; its "
            "figures are not measurements of anything.",
            "",
        ]
    state = "finished" if report["finished"] else "in progress or cut short"
    lines.append(
        f"Commit `{report['commit']}`; {state}, {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget."
    )
    if env:
        lines.append("Environment: " + summarize({"id": "environment", "figures": env}) + ".")
    lines += ["", "| step | what | status | wall s | result |", "|---|---|---|---|---|"]
    for r in report["steps"]:
        status = r["status"] if r["status"] != "ok" else "ok"
        wall = _s(r.get("wall_s"), 1) if "wall_s" in r else "-"
        text = summarize(r) if r.get("figures") else r.get("reason", "")
        if r.get("figures") and r["status"] != "ok" and r.get("reason"):
            text = f"{r['reason']}; {text}"
        lines.append(f"| {r['group']} `{r['id']}` | {r['title']} | {status} | {wall} | {_md_cell(text)} |")
    lines += ["", "## Steps", ""]
    for r in report["steps"]:
        lines.append(f"### {r['group']} `{r['id']}`: {r['status']}")
        if r.get("reason"):
            lines.append(f"Reason: {r['reason']}")
        for command in r.get("commands", []):
            lines += ["", "```", command, "```"]
        if r.get("log"):
            lines.append(f"Log: `{r['log']}` in `{LOGS_ARCHIVE}`.")
        if r.get("log_tail"):
            lines += ["", "```", r["log_tail"], "```"]
        lines.append("")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------------- the entry


def _commit(given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _parse_limits(items: Sequence[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"device_check: --limit wants ID=SECONDS, got {item!r}")
        limits[key.strip()] = float(value)
    return limits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where the report, the logs archive and the profile land")
    parser.add_argument("--work", type=Path, help="step dirs and the compile cache (default: outputs/...-work/)")
    parser.add_argument("--dry", action="store_true", help="the CPU, the tiny checkpoint, small sizes")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler trace of one clip")
    parser.add_argument("--budget-s", type=float, help="total seconds, counted from --started (GPU 480, DRY 1500)")
    parser.add_argument("--started", type=float, help="epoch seconds when the check began (before installation)")
    parser.add_argument("--limit", action="append", default=[], metavar="ID=SECONDS", help="a step's time limit")
    parser.add_argument("--steps", help="only these step ids, comma-separated (others are reported as skipped)")
    parser.add_argument("--half", choices=["fp16", "bf16"], help="the half precision of the GPU steps (fp16)")
    parser.add_argument("--commit", help="the commit being measured (default: git rev-parse HEAD)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the steps")
    parser.add_argument("--probe", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        Path(args.probe).write_text(json.dumps(environment_probe(), indent=2) + "\n")
        return 0
    sizes = DRY if args.dry else GPU
    sizes = dataclasses.replace(
        sizes,
        half=args.half if args.half and not args.dry else sizes.half,
        limits={**sizes.limits, **_parse_limits(args.limit)},
    )
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or ROOT / "outputs" / "device-check" / stamp).resolve()
    work = (args.work or ROOT / "outputs" / "device-check-work" / f"{out.name}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    run = Run(
        out=out,
        work=work,
        budget_s=args.budget_s if args.budget_s is not None else sizes.budget_s,
        started=args.started if args.started is not None else time.time(),
        dry=args.dry,
        commit=_commit(args.commit),
        argv=list(sys.argv if argv is None else argv),
    )
    steps = plan_steps(sizes, args.python, work, profile=args.profile)
    selected = {s.strip() for s in args.steps.split(",") if s.strip()} if args.steps else None
    if selected is not None and (unknown := selected - {s.id for s in steps}):
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; the steps are {', '.join(s.id for s in steps)}")
    runner = StepRunner(run, steps, selected)

    def stop(signum: int, _frame: Any) -> None:
        runner.interrupt()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"device-check: {len(steps)} steps, budget {run.budget_s:.0f} s; report in {out}", flush=True)
    code = runner.execute()
    for record in run.records:
        print(f"  {record['group']:>2} {record['id']:<26} {record['status']:<10} {summarize(record)}", flush=True)
    print(f"device-check: {out / REPORT_MD}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
