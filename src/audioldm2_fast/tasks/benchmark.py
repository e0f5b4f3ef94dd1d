"""``task=benchmark``: warm-up, then timed runs of the chain (and optionally the stock pipeline, alternating).

Stages are synchronised at their boundaries, so per-stage times are device times. ``benchmark.json`` holds every run;
the printed table holds medians.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..api import GenerationResult
from ..generator import Generator
from ..outputs.files import reserve_path, write_bytes
from ..outputs.provenance import installed_version
from ..runtime.devices import synchronize
from ..runtime.errors import PROG


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _versions() -> dict[str, str | None]:
    return {name: installed_version(name) for name in ("torch", "diffusers", "transformers")}


class Benchmark:
    def __init__(self, cfg: DictConfig):
        bcfg = cfg.benchmark
        self.warmup, self.runs = int(bcfg.warmup), int(bcfg.runs)
        if not bcfg.write_audio:  # a new config value: the run records the chain it really ran
            cfg = OmegaConf.merge(cfg, {"pipeline": {"chain": [s for s in cfg.pipeline.chain if s != "writer"]}})
        t0 = time.perf_counter()
        self.generator = Generator(cfg)
        self.cfg = self.generator.cfg  # with what an optimisation resolved (a memory plan)
        self.load_s = time.perf_counter() - t0
        self.device = next(s.device for s in self.generator.stages if s.name == "denoiser")
        self.reference = None
        if bcfg.reference == "diffusers":
            from .reference import DiffusersReference  # the stock pipeline: only when asked for

            self.reference = DiffusersReference(self.generator)

    def _request(self) -> dict[str, Any]:
        state = self.generator.new_state()
        return {
            "prompts": state.prompts,
            "negative_prompts": state.negative_prompts,
            "steps": state.steps,
            "guidance_scale": state.guidance_scale,
            "audio_length_s": state.audio_length_s,
            "num_waveforms": state.num_waveforms,
            "eta": state.eta,
            "max_new_tokens": state.max_new_tokens,
            "seed": state.seed,
        }

    def _timed(self, fn) -> tuple[Any, float, dict[str, float]]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        memory = {"peak_rss_mb": _peak_rss_mb()}
        if cuda:
            memory["peak_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            memory["peak_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        return out, elapsed, memory

    def run(self) -> dict[str, Any]:
        request = self._request()
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        first: dict[str, float] = {}
        result: GenerationResult | None = None
        reference_audio = None
        for i in range(self.warmup + self.runs):
            result, elapsed, memory = self._timed(self.generator.generate)
            timed = i >= self.warmup
            if i == 0:
                first["ours_s"] = elapsed
            if timed:
                ours.append({"e2e_s": elapsed, "stages_s": dict(result.timings), **memory})
            if self.reference is not None:
                reference_audio, ref_elapsed, ref_memory = self._timed(lambda: self.reference(request))
                if i == 0:
                    first["reference_s"] = ref_elapsed
                if timed:
                    theirs.append({"e2e_s": ref_elapsed, **ref_memory})
        fp32_audio = None
        if self.reference is not None and self.reference.is_half and self.cfg.benchmark.get("fp32_check", True):
            fp32_audio = self.reference.fp32_audio(request)  # once, untimed
        return self._report(request, result, ours, theirs, first, reference_audio, fp32_audio)

    def _report(self, request, result, ours, theirs, first, reference_audio, fp32_audio=None) -> dict[str, Any]:
        cfg = self.cfg
        e2e = [r["e2e_s"] for r in ours]
        stage_names = list(ours[0]["stages_s"])
        stages = {name: _stats([r["stages_s"][name] for r in ours]) for name in stage_names}
        audio_s = result.waveforms.shape[0] * result.waveforms.shape[1] / result.sample_rate
        median = statistics.median(e2e)
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "device": _device_name(self.device),
            "versions": _versions(),
            "settings": {
                "checkpoint": cfg.checkpoint.name,
                "precision": cfg.precision.name,
                "attention": cfg.attention.backend,
                "compile": cfg.compile.mode,
                "offload": cfg.offload.mode,
                "scheduler": cfg.scheduler.name,
                "steps": request["steps"],
                "prompts": len(request["prompts"]),
                "num_waveforms": request["num_waveforms"],
                "audio_length_s": result.waveforms.shape[1] / result.sample_rate,
                "guidance_scale": request["guidance_scale"],
                "memory": {
                    k: v
                    for k, v in cfg.memory.items()
                    if v is not None and not k.startswith("_") and not k.endswith("_overlap_frames")
                },
            },
            "memory_plan": self.generator.memory_plan,
            "load_s": self.load_s,
            "first_call_s": first["ours_s"],
            "warmup": self.warmup,
            "runs": ours,
            "e2e_s": _stats(e2e),
            "stages_s": stages,
            "denoiser_steps_per_s": request["steps"] / stages["denoiser"]["median"] if "denoiser" in stages else None,
            "audio_seconds": audio_s,
            "real_time_factor": median / audio_s,  # processing time per second of audio (lower is faster)
            "x_realtime": audio_s / median,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
        }
        if "peak_allocated_mb" in ours[0]:
            report["peak_allocated_mb"] = max(r["peak_allocated_mb"] for r in ours)
            report["peak_reserved_mb"] = max(r["peak_reserved_mb"] for r in ours)
        if theirs:
            ratios = [o["e2e_s"] / t["e2e_s"] for o, t in zip(ours, theirs, strict=True)]
            report["reference"] = {
                "name": "diffusers.AudioLDM2Pipeline",
                "notes": self.reference.notes,
                "first_call_s": first["reference_s"],
                "runs": theirs,
                "e2e_s": _stats([t["e2e_s"] for t in theirs]),
                "ratio_per_run": ratios,  # our time / its time
                "ratio_median": statistics.median(ratios),
                "max_abs_diff": float(np.abs(result.waveforms - reference_audio).max()),
            }
            if fp32_audio is not None:
                # Equivalence at half precision: ours vs stock no further apart than stock half vs stock fp32.
                tolerance = float(np.abs(reference_audio - fp32_audio).max())
                report["reference"]["stock_vs_stock_fp32_max_abs_diff"] = tolerance
                report["reference"]["ours_vs_stock_fp32_max_abs_diff"] = float(
                    np.abs(result.waveforms - fp32_audio).max()
                )
                report["reference"]["equivalent"] = report["reference"]["max_abs_diff"] <= tolerance
        return report


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the medians, for the terminal and for logs."""
    s = report["settings"]
    lines = [
        f"benchmark: {s['checkpoint']} {s['precision']} attention={s['attention']} compile={s['compile']} "
        f"offload={s['offload']} {s['scheduler']}x{s['steps']} batch={s['prompts']}x{s['num_waveforms']} "
        f"{s['audio_length_s']:.2f}s on {report['device']} "
        f"({len(report['runs'])} runs after {report['warmup']} warm-up)",
        f"{'stage':<16}{'median ms':>12}{'min ms':>12}{'max ms':>12}",
    ]
    for name, st in report["stages_s"].items():
        lines.append(f"{name:<16}{st['median'] * 1e3:>12.2f}{st['min'] * 1e3:>12.2f}{st['max'] * 1e3:>12.2f}")
    e = report["e2e_s"]
    lines.append(f"{'end to end':<16}{e['median'] * 1e3:>12.2f}{e['min'] * 1e3:>12.2f}{e['max'] * 1e3:>12.2f}")
    extra = [f"load {report['load_s']:.2f} s", f"first call {report['first_call_s']:.2f} s"]
    if report.get("denoiser_steps_per_s"):
        extra.append(f"denoiser {report['denoiser_steps_per_s']:.1f} steps/s")
    extra.append(f"{report['x_realtime']:.1f}x real time")
    extra.append(f"peak RSS {report['peak_rss_mb']:.0f} MiB")
    if "peak_allocated_mb" in report:
        extra.append(
            f"peak alloc {report['peak_allocated_mb']:.0f} MiB / reserved {report['peak_reserved_mb']:.0f} MiB"
        )
    lines.append(", ".join(extra))
    plan = report.get("memory_plan")
    if plan:
        lines.append(
            f"memory.budget_gb={plan['budget_gb']:g}: {plan['steps']} (offload={plan['offload']}), "
            f"estimated peak {plan['estimated_peak_gib']:.2f} GiB"
        )
    ref = report.get("reference")
    if ref:
        lines.append(
            f"diffusers reference: median {ref['e2e_s']['median'] * 1e3:.2f} ms; ours/theirs median "
            f"{ref['ratio_median']:.3f} ({1 / ref['ratio_median']:.2f}x faster); max abs diff {ref['max_abs_diff']:.2e}"
        )
        if "equivalent" in ref:
            verdict = "within" if ref["equivalent"] else "NOT within"
            lines.append(
                f"  equivalence: ours vs stock {ref['max_abs_diff']:.2e} is {verdict} stock vs its own fp32 "
                f"{ref['stock_vs_stock_fp32_max_abs_diff']:.2e} (ours vs stock fp32 "
                f"{ref['ours_vs_stock_fp32_max_abs_diff']:.2e})"
            )
        for note in ref["notes"]:
            lines.append(f"  reference: {note}")
    return "\n".join(lines)


def run_benchmark(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    benchmark = Benchmark(cfg)
    report = benchmark.run()
    report["config"] = OmegaConf.to_container(benchmark.cfg, resolve=True)
    if not cfg.benchmark.get("save", True):
        report["path"] = None
        return report
    output_dir.mkdir(parents=True, exist_ok=True)
    path = reserve_path(output_dir, "benchmark", ".json")  # never replaces an earlier report
    write_bytes(path, (json.dumps(report, indent=2, default=str) + "\n").encode())
    report["path"] = str(path)
    return report


def run_benchmark_task(cfg: DictConfig) -> dict[str, Any]:
    """``task=benchmark``: run it, print the table, and return the row of a sweep summary."""
    report = run_benchmark(cfg, Path(cfg.output.dir))
    print(format_table(report))
    if report["path"]:
        print(f"{PROG}: wrote {report['path']}")
    summary = {
        "task": "benchmark",
        "e2e_s": report["e2e_s"]["median"],
        "first_call_s": report["first_call_s"],
        "load_s": report["load_s"],
        "stages_s": {k: v["median"] for k, v in report["stages_s"].items()},
        "peak_rss_mb": report["peak_rss_mb"],
        "peak_allocated_mb": report.get("peak_allocated_mb"),
        "outputs": [report["path"]] if report["path"] else [],
    }
    if "reference" in report:
        summary["reference_ratio"] = report["reference"]["ratio_median"]
        summary["reference_max_abs_diff"] = report["reference"]["max_abs_diff"]
    return summary
