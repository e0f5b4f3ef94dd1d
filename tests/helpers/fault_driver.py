"""Kill -9 at random points of a batch run with two workers on one output dir, restart, and finally resume.

``python fault_driver.py REPORT.json --out DIR --logs DIR --seed S --kills K [override ...]`` writes what it did to
REPORT.json; ``test_batch_faults.py`` then checks the output dir itself.

One process loads the checkpoint once and forks every worker from it, so that a restart costs a fork rather than a
cold start, and 20+ kills fit in well under a minute. Each worker runs ``run_batch`` on the same ``output.dir`` (some
as shard 0 or 1 of 2, most as the whole file) and is killed with SIGKILL in one of two ways, chosen by the seed:

- by the driver, after a random delay (anywhere: generation, rendering, a write, a claim, recovery);
- by itself (every other start), at the k-th call of one of the steps that change the output dir (a journal entry, a
  hard link, a manifest append cut in half, an unlink, a rename), before or after the call, so that the narrow
  windows between two steps are hit as well. The steps take turns: a step stays armed until a worker has died at it
  (or missed it three times, running out of work first). The driver leaves an armed worker alone.

A killed worker is restarted at once. When every item is complete before the kills are done, new lines are appended
to the prompts file. After the last kill, the live workers run to the end, and a last worker resumes the whole dir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

#: The steps a worker may be armed to die at, in turn, and the most calls of each it makes before dying there (one
#: item makes a header and 3 entries per file in its journal, 4 links, 4 unlinks and 1 append; a run ends with a
#: rename of report.html).
STEPS = {"journal": 13, "link": 4, "append": 1, "unlink": 4, "replace": 1}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(step: str, at: int, after: bool) -> None:
    """Kill this process at the ``at``-th call of ``step`` (before the call, or right after it)."""
    from audioldm2_fast.outputs import journal, manifest
    from audioldm2_fast.stages import writer

    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == at

    def wrap(fn):
        def wrapped(*args, **kwargs):
            due = hit()
            if due and not after:
                _die()
            out = fn(*args, **kwargs)
            if due:
                _die()
            return out

        return wrapped

    if step == "journal":
        journal.Journal.record = wrap(journal.Journal.record)
    elif step == "link":
        os.link = wrap(os.link)
    elif step == "unlink":
        os.unlink = wrap(os.unlink)
    elif step == "replace":
        os.replace = wrap(os.replace)
    elif step == "append":
        real = writer.append_rows

        def torn(path, rows):
            if hit():
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                with manifest.locked(path) as fd:
                    os.write(fd, data[: len(data) // 2])
                _die()
            real(path, rows)

        writer.append_rows = torn


def _worker(cfg, generator, plan: dict, log: Path) -> None:
    """The body of a forked worker: never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        print(f"--- worker {os.getpid()} {json.dumps(plan)}", flush=True)
        if plan.get("step"):
            _arm(plan["step"], plan["at"], plan["after"])
        from omegaconf import OmegaConf

        from audioldm2_fast.batch.run import run_batch

        run_batch(OmegaConf.merge(cfg, {"shard": plan["shard"]}), generator)
        code = 0
    except BaseException:  # noqa: BLE001 - reported through the exit code and the log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("--out", required=True)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--max-delay", type=float, default=1.5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()

    import torch

    torch.set_num_threads(1)  # no thread pool in the parent: forked children start clean
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - imported once here, not in every worker

    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.generator import Generator

    prompts = Path(args.prompts)
    cfg = compose_config([*args.overrides, f"prompts_file={prompts}", f"output.dir={args.out}", "progress=false"])
    generator = Generator(cfg)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    report: dict = {"seed": args.seed, "kills": [], "restarts": 0, "errors": [], "lines_added": 0}
    workers: dict[int, tuple[int, dict]] = {}
    turns = {"starts": 0, "armed": 0, "misses": 0}

    def start(slot: int, faults: bool = True) -> None:
        plan: dict = {"slot": slot, "shard": {"index": 0, "count": 1}}
        if slot == 1 and rng.random() < 0.3:
            plan["shard"] = {"index": rng.randrange(2), "count": 2}
        turns["starts"] += 1
        if faults and turns["starts"] % 2:
            step = list(STEPS)[turns["armed"] % len(STEPS)]
            plan.update(step=step, at=rng.randint(1, STEPS[step]), after=rng.random() < 0.5)
        pid = os.fork()
        if pid == 0:
            _worker(cfg, generator, plan, logs / f"worker-{slot}.log")
        workers[slot] = (pid, plan)
        report["restarts"] += 1

    def reap(slot: int, status: int, by_driver: bool) -> str:
        pid, plan = workers.pop(slot)
        if plan.get("step"):  # the next step's turn once this one was hit, or missed three times
            hit = not by_driver and os.WIFSIGNALED(status)
            turns["misses"] = 0 if hit else turns["misses"] + 1
            if hit or turns["misses"] >= 3:
                turns["armed"], turns["misses"] = turns["armed"] + 1, 0
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            report["kills"].append({"by": "driver" if by_driver else plan.get("step", "?"), "plan": plan})
            return "killed"
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        if code != 0:
            report["errors"].append({"pid": pid, "plan": plan, "status": status})
        return "exited"

    def add_lines() -> None:
        existing = prompts.read_text().count("\n")
        with prompts.open("a") as fh:
            for k in range(existing, existing + 4):
                fh.write(f"the sound number {k}|item{k:03d}\n")
        report["lines_added"] += 4

    for slot in (0, 1):
        start(slot)
    while len(report["kills"]) < args.kills:
        end = time.monotonic() + rng.uniform(0.05, args.max_delay)
        victim = rng.randrange(2)
        while time.monotonic() < end and len(report["kills"]) < args.kills:
            for slot in list(workers):
                pid, _ = workers[slot]
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if reap(slot, status, by_driver=False) == "exited" and not report["errors"]:
                        add_lines()  # the work ran out before the kills did
                    start(slot)
            time.sleep(0.01)
        if len(report["kills"]) >= args.kills or victim not in workers or workers[victim][1].get("step"):
            continue
        pid, _ = workers[victim]
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reap(victim, status, by_driver=True)
        start(victim)

    report["kill_phase_s"] = time.monotonic() - t0
    for slot in list(workers):  # the last two run to the end: they may still meet their own armed fault
        while slot in workers:
            pid, _ = workers[slot]
            _, status = os.waitpid(pid, 0)
            if reap(slot, status, by_driver=False) == "killed":
                start(slot, faults=False)
    start(0, faults=False)  # a final resume of the whole dir
    pid, _ = workers[0]
    _, status = os.waitpid(pid, 0)
    reap(0, status, by_driver=False)
    report["total_s"] = time.monotonic() - t0
    Path(args.report).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
