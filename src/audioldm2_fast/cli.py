"""The ``audioldm2-fast`` command: a Hydra app whose bad input fails in one line before anything is loaded."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from .config.paths import conf_dir, config_groups
from .runtime.errors import Audioldm2FastError, ConfigError, ItemsFailedError

log = logging.getLogger("audioldm2_fast")

PROG = "audioldm2-fast"
# Hydra flags that take a value, and flags that mean "do not run a job" (help, config printing, ...).
_VALUE_FLAGS = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-p",
    "--package",
    "--experimental-rerun",
}
_INFO_FLAGS = {
    "-h",
    "--help",
    "--hydra-help",
    "--version",
    "-c",
    "--cfg",
    "-i",
    "--info",
    "-sc",
    "--shell-completion",
    "--resolve",
}


def _split_argv(argv: Sequence[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, info_only) from a Hydra command line."""
    overrides: list[str] = []
    multirun = info_only = False
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _VALUE_FLAGS:
            skip_next = True
        elif arg.split("=")[0] in _INFO_FLAGS:
            info_only = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun, info_only


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type", "Set the environment"))]
    return re.sub(r"\s+", " ", "; ".join(lines))


def check_overrides(argv: Sequence[str]) -> DictConfig | None:
    """Refuse unknown group options, unknown keys and invalid values before Hydra starts a run.

    Returns the composed config of a single run (the first job's, in a sweep); None for info-only flags.
    """
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config.overrides import check_added_key, check_flags

    location = check_flags(argv)
    overrides, multirun, info_only = _split_argv(argv)
    if info_only:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError("", f"cannot parse the overrides: {_one_line(exc)}") from None

    groups = config_groups(location.config_dir)
    first_values: list[str] = []
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override():
            if not multirun:
                raise ConfigError(
                    key,
                    "a comma-separated value is a sweep: add -m to sweep it, "
                    f"or quote a value that contains commas ({key}=\"'a, b'\")",
                )
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()] if not override.is_delete() else []
        if key == "task" and multirun and "doctor" in values:
            raise ConfigError(key, "task=doctor checks the environment once: run it without -m")
        if key in groups:
            for value in values:
                if value not in groups[key]:
                    raise ConfigError(key, f"unknown option {value!r}; choose one of: {', '.join(groups[key])}")
        first = values[0] if values else None
        prefix = override.get_key_element()
        first_values.append(override.input_line if first is None else f"{prefix}={first}")

    from .generator import compose_config

    def compose(values: list[str]) -> DictConfig:
        return compose_config(values, location.config_name, location.config_dir)

    try:
        added = [o for o in parsed if (o.is_add() or o.is_force_add()) and o.key_or_group not in groups]
        if added:
            known = compose([v for v, o in zip(first_values, parsed, strict=True) if o not in added])
            for override in added:
                check_added_key(override.key_or_group, known)
        cfg = compose(first_values)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"cannot read a config file: {_one_line(exc)}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        message = _one_line(exc)
        match = re.search(r"Could not override '([^']+)'", message)
        if match:
            raise ConfigError(match.group(1), "unknown key (check the spelling; --cfg job lists every key)") from None
        raise ConfigError("", message) from None
    if multirun and cfg.get("prompts_file") is not None:
        from .batch.items import read_items

        read_items(cfg)  # a malformed prompts file fails once, before any job starts
    if not multirun:
        from .checkpoints.resolve import resolve_checkpoint
        from .config.validate import validate_config

        validate_config(cfg)
        if cfg.task not in ("doctor", "merge"):
            resolve_checkpoint(cfg.checkpoint)  # a missing checkpoint fails here, before Hydra creates a run dir
    return cfg


def _fail(exc: Audioldm2FastError) -> None:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_task(cfg: DictConfig) -> dict:
    """One Hydra job: run the configured task and report it. Returns a summary for the sweep summary."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.task == "merge":
        from .batch.merge import run_merge

        return run_merge(cfg)
    if cfg.output.get("dir") is None:
        cfg.output.dir = HydraConfig.get().runtime.output_dir
    if cfg.task == "benchmark":
        return _benchmark(cfg)
    if cfg.get("prompts_file") is not None:
        from .batch.run import run_batch

        return run_batch(cfg)
    return _generate(cfg)


def _benchmark(cfg: DictConfig) -> dict:
    from pathlib import Path

    from .tasks.benchmark import format_table, run_benchmark

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


def _generate(cfg: DictConfig) -> dict:
    from pathlib import Path

    from .generator import Generator

    generator = Generator(cfg)
    result = generator.generate()
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
def _hydra_entry(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _quiet_libraries()  # again here: a launcher may run this job in a fresh process that never went through main()
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
    _quiet_libraries()
    try:
        cfg = check_overrides(argv)
    except Audioldm2FastError as exc:
        _fail(exc)
    if cfg is not None and cfg.task == "doctor" and "-m" not in argv and "--multirun" not in argv:
        from .tasks.doctor import run_doctor

        sys.exit(run_doctor())  # no Hydra run: the doctor writes nothing
    sys.argv = [PROG, *argv]
    _hydra_entry()


def _quiet_libraries() -> None:
    """Model-loading progress bars and advisory warnings from diffusers/transformers are noise in a CLI run."""
    import warnings

    import diffusers
    import transformers

    from .runtime.progress import silence_library_bars

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    silence_library_bars()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
