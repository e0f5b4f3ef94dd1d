"""The ``audioldm2-fast`` command: a Hydra app whose bad input fails in one line before anything is loaded.

Start-up is kept light: ``--help``, ``--cfg``, shell completion and every refusal of a bad key, value, option,
prompt, prompts file or checkpoint path import neither torch nor diffusers nor transformers. Those are imported by
the task that runs (each task's module is imported when it is chosen), and by the stage classes themselves when a
chain names them, which is checked after every cheap check. Last come the checks that need the model libraries and
the checkpoint's files but no weights: component configs, the scheduler, GPT-2's positions, the audio length and the
memory of a call (``generator.check_before_loading``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .batch.items import read_items
from .batch.merge import run_merge
from .batch.settings import check_recorded_settings
from .checkpoints.resolve import resolve_checkpoint
from .config.help import help_text
from .config.overrides import check_flags, compose_command_line
from .config.paths import conf_dir
from .config.requests import check_server
from .config.validate import validate_config
from .runtime.errors import PROG, Audioldm2FastError, ItemsFailedError
from .stages.registry import check_chain
from .tasks.batch_invariance import prefer_reproducible_blas
from .tasks.doctor import run_doctor

log = logging.getLogger("audioldm2_fast")


def check_overrides(argv: Sequence[str]) -> DictConfig | None:
    """Refuse bad flags, group options, keys, values and combinations before Hydra starts a run.

    Returns the composed config of a single run (the first job's, in a sweep); None for info-only flags.
    """
    line, cfg = compose_command_line(argv)
    if cfg is None:
        return None
    if line.multirun:
        if cfg.get("prompts_file") is not None:
            read_items(cfg)  # a malformed prompts file fails once, before any job starts
        return cfg
    validated = validate_config(cfg)
    if cfg.task == "merge":
        return cfg
    items = read_items(cfg) if cfg.get("prompts_file") is not None else None
    if items is not None and cfg.output.get("dir") is not None:
        check_recorded_settings(Path(str(cfg.output.dir)).expanduser(), cfg)  # another batch run's dir
    if cfg.task == "serve":
        check_server(cfg)
        prefer_reproducible_blas()  # before anything calls MKL (see tasks/batch_invariance.py)
    if cfg.task != "doctor":
        resolve_checkpoint(cfg.checkpoint)  # a missing checkpoint fails here, before Hydra creates a run dir
        check_chain(cfg, validated.optimizations)  # imports the stage classes: last, after every cheap check
        _check_before_loading(cfg, items)
    return cfg


def _check_before_loading(cfg: DictConfig, items: list | None) -> None:
    """What only the checkpoint and the device bound (``generator.check_before_loading``): the model libraries are
    imported by now, by the stage classes."""
    from .generator import check_requests, requests_of

    if items is None:
        check_requests(cfg, requests_of(cfg))
        return
    from .batch.items import shard_items
    from .batch.run import item_requests

    check_requests(cfg, item_requests(cfg, shard_items(items, int(cfg.shard.index), int(cfg.shard.count))))


def _fail(exc: Audioldm2FastError) -> None:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job: run the configured task and report it. Returns a summary for the sweep summary.

    Each task's module is imported when the task runs: they import torch and the model libraries.
    """
    if cfg.task == "merge":
        return run_merge(cfg)
    if cfg.output.get("dir") is None:
        cfg = OmegaConf.merge(cfg, {"output": {"dir": HydraConfig.get().runtime.output_dir}})
    if cfg.task == "benchmark":
        from .tasks.benchmark import run_benchmark_task  # heavy: torch and the model libraries

        return run_benchmark_task(cfg)
    if cfg.task == "serve":
        from .tasks.serve import run_serve  # heavy: torch, the model libraries and the web stack

        return run_serve(cfg)
    if cfg.get("prompts_file") is not None:
        from .batch.run import run_batch  # heavy: torch and the model libraries

        return run_batch(cfg)
    return _generate(cfg)


def _generate(cfg: DictConfig) -> dict[str, Any]:
    from .generator import Generator  # heavy: torch and the model libraries

    generator = Generator(cfg)
    result = generator()
    for record in result.records:
        rank = f" rank {record['rank']} score {record['score']:.3f}" if record["score"] is not None else ""
        log.info("wrote %s%s", record["path"], rank)
    total = sum(result.timings.values())
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    where = f"wrote {len(result.records)} file(s) to {cfg.output.dir}" if result.records else "wrote nothing"
    print(f"{PROG}: generated {len(result.waveforms)} waveform(s), {where}, in {total:.2f} s ({stages})")
    if result.failed:  # each item was logged as it failed
        raise ItemsFailedError(
            f"{len(result.failed)} of {len(result.waveforms)} item(s) failed, the others were written "
            f"(first: {result.failed[0]})"
        )
    return {
        "task": "generate",
        "e2e_s": total,
        "stages_s": dict(result.timings),
        "load_s": generator.load_time_s,
        "outputs": [str(Path(cfg.output.dir) / r["path"]) for r in result.records],
    }


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return run_task(cfg)
    except Audioldm2FastError as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra records an Exception as this job's failure and runs the remaining jobs; an exit would end the sweep.
            print(f"{PROG}: error: job {HydraConfig.get().job.num}: {exc}", file=sys.stderr)
            raise
        _fail(exc)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``audioldm2-fast`` and ``python -m audioldm2_fast``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # read from the config files; Hydra's help composes every group (slow)
        try:
            location = check_flags(argv)
        except Audioldm2FastError as exc:
            _fail(exc)
        print(help_text(tuple(d for d in (location.config_dir,) if d is not None)))
        sys.exit(0)
    try:
        cfg = check_overrides(argv)
    except Audioldm2FastError as exc:
        _fail(exc)
    if cfg is not None and cfg.task == "doctor" and "-m" not in argv and "--multirun" not in argv:
        sys.exit(run_doctor())  # no Hydra run: the doctor writes nothing
    sys.argv = [PROG, *argv]
    _hydra_entry()
