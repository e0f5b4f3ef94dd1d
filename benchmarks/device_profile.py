"""``make device-check PROFILE=1``: torch.profiler over one clip, with a trace small enough to come back and a table.

The clip runs in this process through ``Generator`` after warm-up calls (so a compiled denoiser is compiled and its
CUDA graphs recorded). Two calls are profiled, with ``--steps`` and with ``--delta-steps`` denoising steps; the
difference of the two, divided by the difference in steps, is the cost of one denoising step (kernels, launches,
device time, host gaps) without the text side, the decoder and the vocoder, and without touching the chain's
internals. On the CPU the same code runs with CPU activities only (see ``analyze`` for what stands in there).

Writes into ``--out``: ``profile-trace.json.gz`` (the ``--steps`` call, gzip-compressed, trimmed to ``--cap-mb``),
``profile.json`` (the figures) and ``profile.md`` (the tables).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATEGORIES = {"cuda_runtime", "cuda_driver"}
LAUNCH = re.compile(r"launch", re.IGNORECASE)  # cudaLaunchKernel(ExC), cuLaunchKernel(Ex), cudaGraphLaunch, ...
GAP_US = 10.0  # device idle stretches shorter than this are launch latency, not host stalls worth listing


def _complete(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]


def _category(event: dict[str, Any]) -> str:
    return str(event.get("cat", "")).lower()


def cpu_op_tree(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, float, bool]]:
    """Each CPU op with its nesting depth on its thread, its self time (us) and whether it is a leaf."""
    by_thread: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if _category(e) == "cpu_op":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    nodes: list[tuple[dict[str, Any], int, float, bool]] = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[list[Any]] = []  # [event, end, depth, children's time, has children]
        done: list[list[Any]] = []
        for e in thread:
            start = float(e["ts"])
            while stack and stack[-1][1] <= start:
                done.append(stack.pop())
            if stack:
                stack[-1][3] += float(e["dur"])
                stack[-1][4] = True
            stack.append([e, start + float(e["dur"]), len(stack), 0.0, False])
        done += stack
        nodes += [(e, depth, max(0.0, float(e["dur"]) - children), not has) for e, _, depth, children, has in done]
    return nodes


def analyze(trace: dict[str, Any], top: int = 15) -> dict[str, Any]:
    """Kernels, launches, device time, device idle time between kernels and the top kernels of one trace.

    On CUDA: device kernels (with copies and memsets), launches are the host's launch calls (a CUDA graph replay is
    one), idle is device time between kernels. On the CPU: the ops that Python dispatched (top-level ops) play the
    launches and set the busy time, idle is the time between them (Python and framework overhead), kernels are the
    leaf ops, and the top list ranks ops by self time.
    """
    events = _complete(trace.get("traceEvents", []))
    device_events = [e for e in events if _category(e) in DEVICE_CATEGORIES]
    weighted: list[tuple[str, float]]
    if device_events:
        device = "cuda"
        kernels = len(device_events)
        launches = sum(_category(e) in HOST_CATEGORIES and bool(LAUNCH.search(str(e.get("name", "")))) for e in events)
        busy_events = device_events
        weighted = [(str(e.get("name", "?")), float(e["dur"])) for e in device_events]
    else:
        device = "cpu"
        tree = cpu_op_tree(events)
        kernels = sum(leaf for _, _, _, leaf in tree)
        busy_events = [e for e, depth, _, _ in tree if depth == 0]
        launches = len(busy_events)
        weighted = [(str(e.get("name", "?")), self_us) for e, _, self_us, _ in tree]
    intervals = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in busy_events)
    gaps: list[float] = []
    busy = span = 0.0
    if intervals:
        start, end = intervals[0]
        for s, e in intervals[1:]:
            if s > end:
                busy += end - start
                gaps.append(s - end)
                start, end = s, e
            else:
                end = max(end, e)
        busy += end - start
        span = end - intervals[0][0]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, us in weighted:
        totals[name][0] += 1
        totals[name][1] += us
    total_us = sum(t[1] for t in totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "device": device,
        "kernels": kernels,
        "launches": launches,
        "device_us": busy,
        "span_us": span,
        "busy_us": busy,
        "idle_us": span - busy,
        "idle_fraction": (span - busy) / span if span else 0.0,
        "gaps_over_10us": sum(g > GAP_US for g in gaps),
        "largest_gaps_us": sorted(gaps, reverse=True)[:10],
        "top_kernels": [
            {
                "name": name[:160],
                "calls": int(count),
                "total_ms": total / 1e3,
                "mean_us": total / count,
                "share": total / total_us if total_us else 0.0,
            }
            for name, (count, total) in ranked
        ],
    }


def per_step(long: dict[str, Any], short: dict[str, Any], steps: int, delta_steps: int) -> dict[str, float]:
    """What one more denoising step costs: the difference of two profiled calls over their difference in steps."""
    d = steps - delta_steps
    return {
        "kernels_per_step": (long["kernels"] - short["kernels"]) / d,
        "launches_per_step": (long["launches"] - short["launches"]) / d,
        "device_ms_per_step": (long["device_us"] - short["device_us"]) / d / 1e3,
        "idle_ms_per_step": (long["idle_us"] - short["idle_us"]) / d / 1e3,
    }


def capped_trace(trace: dict[str, Any], cap_bytes: int) -> tuple[bytes, list[str]]:
    """The trace gzip-compressed, with the least useful events dropped until it fits (what was dropped is listed)."""
    events = list(trace.get("traceEvents", []))
    rest = {k: v for k, v in trace.items() if k != "traceEvents"}
    cuts = [
        ("flow and instant events", lambda e: e.get("ph") in ("X", "M")),
        ("CPU ops under 50 us", lambda e: _category(e) != "cpu_op" or float(e.get("dur", 0)) >= 50),
        ("all CPU ops and Python frames", lambda e: _category(e) not in ("cpu_op", "python_function")),
        (
            "host events other than launches",
            lambda e: (
                _category(e) in DEVICE_CATEGORIES
                or e.get("ph") == "M"
                or (_category(e) in HOST_CATEGORIES and LAUNCH.search(str(e.get("name", ""))))
            ),
        ),
    ]
    dropped: list[str] = []

    def pack(evs: list[dict[str, Any]]) -> bytes:
        return gzip.compress(json.dumps({**rest, "traceEvents": evs}).encode(), compresslevel=6)

    data = pack(events)
    for label, keep in cuts:
        if len(data) <= cap_bytes:
            return data, dropped
        events = [e for e in events if keep(e)]
        dropped.append(label)
        data = pack(events)
    while len(data) > cap_bytes and len(events) > 1:
        events = events[: len(events) * 3 // 4]
        data = pack(events)
        if "the trace's tail" not in dropped:
            dropped.append("the trace's tail")
    return data, dropped


def render(summary: dict[str, Any]) -> str:
    """profile.md: per-step figures, host gaps and the top kernels of the profiled call."""
    full = summary["call"]
    cuda = full["device"] == "cuda"
    kernels, launches = ("kernels", "launches") if cuda else ("leaf CPU ops", "top-level CPU ops")
    column = "kernel" if cuda else "CPU op (self time)"
    lines = [
        f"# Profile: {summary['steps']}-step clip on {full['device']}",
        "",
        f"Overrides: `{' '.join(summary['overrides'])}`",
        "",
        f"Unprofiled call {summary['e2e_s_unprofiled']:.3f} s; profiled call {summary['e2e_s_profiled']:.3f} s. "
        f"Per denoising step (difference of the {summary['steps']}- and {summary['delta_steps']}-step calls): "
        f"{summary['device_ms_per_step']:.3f} ms busy, {summary['kernels_per_step']:.0f} {kernels}, "
        f"{summary['launches_per_step']:.0f} {launches}, {summary['idle_ms_per_step']:.3f} ms idle.",
        "",
        f"Whole call: {full['kernels']} {kernels}, {full['launches']} {launches}, {full['busy_us'] / 1e3:.1f} ms busy "
        f"in a {full['span_us'] / 1e3:.1f} ms span from the first to the last; idle {full['idle_us'] / 1e3:.1f} ms "
        f"({100 * full['idle_fraction']:.1f}%) in {full['gaps_over_10us']} gaps over {GAP_US:g} us; largest gaps "
        + ", ".join(f"{g / 1e3:.2f} ms" for g in full["largest_gaps_us"][:5])
        + ".",
        "",
        f"| {column} | calls | total ms | mean us | share |",
        "|---|---|---|---|---|",
    ]
    for k in full["top_kernels"]:
        name = k["name"].replace("|", "\\|")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(
            f"| `{name}` | {k['calls']} | {k['total_ms']:.2f} | {k['mean_us']:.1f} | {100 * k['share']:.1f}% |"
        )
    trace = summary["trace"]
    cut = f"; dropped to fit: {', '.join(trace['dropped'])}" if trace["dropped"] else ""
    lines += ["", f"Trace: `{trace['file']}`, {trace['bytes'] / 2**20:.2f} MiB gzip-compressed{cut}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the profiled clip")
    parser.add_argument("--delta-steps", type=int, help="steps of the second profiled call (default: half)")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled calls first (compile, CUDA graphs)")
    parser.add_argument("--cap-mb", type=float, default=12.0, help="the compressed trace's size cap")
    parser.add_argument("overrides", nargs="*", help="Generator overrides, as on the command line")
    args = parser.parse_args(argv)
    delta = args.delta_steps if args.delta_steps is not None else max(1, args.steps // 2)
    if not 0 < delta < args.steps:
        parser.error("--delta-steps must lie between 0 and --steps")

    import torch
    from torch.profiler import ProfilerActivity, profile

    from audioldm2_fast import Generator

    args.out.mkdir(parents=True, exist_ok=True)
    generator = Generator.from_config(args.overrides, write=False)
    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def call(steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        generator.generate(steps=steps)
        sync()
        return time.perf_counter() - t0

    first = call(args.steps)  # compiles and records CUDA graphs, if the settings compile
    unprofiled = first
    for _ in range(args.warmup - 1):
        unprofiled = call(args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    analyses: dict[int, dict[str, Any]] = {}
    profiled_s = float("nan")
    trace_full: dict[str, Any] = {}
    for steps in (args.steps, delta):
        with profile(activities=activities) as prof:
            elapsed = call(steps)
        raw = args.out / f"trace-{steps}.json"
        prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text())
        raw.unlink()
        analyses[steps] = analyze(trace)
        if steps == args.steps:
            profiled_s, trace_full = elapsed, trace
    data, dropped = capped_trace(trace_full, int(args.cap_mb * 2**20))
    (args.out / "profile-trace.json.gz").write_bytes(data)
    summary = {
        "overrides": list(args.overrides),
        "device": analyses[args.steps]["device"],
        "steps": args.steps,
        "delta_steps": delta,
        "first_call_s": first,
        "e2e_s_unprofiled": unprofiled,
        "e2e_s_profiled": profiled_s,
        **per_step(analyses[args.steps], analyses[delta], args.steps, delta),
        "idle_fraction": analyses[args.steps]["idle_fraction"],
        "call": analyses[args.steps],
        "short_call": {k: v for k, v in analyses[delta].items() if k != "top_kernels"},
        "trace": {"file": "profile-trace.json.gz", "bytes": len(data), "dropped": dropped},
    }
    (args.out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "profile.md").write_text(render(summary))
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
