"""Rules across keys that belong to no optimisation: each a small function over a ``Plan`` that raises
``ConfigError`` naming the key to change. Optimisations bring their own rules (``Optimization.check``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from ..runtime.errors import ConfigError
from ..runtime.writability import check_writable_dir
from .optimization import Plan
from .placement import dtype_key
from .prompts import negative_prompt_list, prompt_list
from .schema import FORMATS


def rule_prompts(plan: Plan) -> None:
    cfg = plan.cfg
    if cfg.get("prompt") is not None:
        negative_prompt_list(cfg.get("negative_prompt"), len(prompt_list(cfg.prompt)))
    elif isinstance(cfg.get("negative_prompt"), str):  # with prompts_file: the run's one, for every line without one
        negative_prompt_list(cfg.negative_prompt, 1)


def rule_batch(plan: Plan) -> None:
    """``prompts_file``, ``batch_size`` and ``shard`` (the file itself is read by the batch runner)."""
    cfg = plan.cfg
    if cfg.shard.index >= cfg.shard.count:
        raise ConfigError("shard.index", f"must be below shard.count={cfg.shard.count} (got {cfg.shard.index})")
    if cfg.get("prompts_file") is None:
        if cfg.batch_size != 1 or cfg.shard.count != 1:
            key = "batch_size" if cfg.batch_size != 1 else "shard.count"
            raise ConfigError(key, "applies to prompts_file runs only (prompt= runs all prompts in one call)")
        return
    if cfg.get("prompt") is not None:
        raise ConfigError("prompts_file", "give either prompt or prompts_file, not both")
    if not isinstance(cfg.get("negative_prompt"), (str, type(None))):
        raise ConfigError("negative_prompt", "with prompts_file, give one string (per-line ones go in the file)")
    if (cfg.scheduler.get("config") or {}).get("noise_sampler_seed") is not None:
        raise ConfigError(
            "scheduler",
            f"{cfg.scheduler.name} draws one seeded noise for a whole call, so an item's audio would depend on "
            "its batch; prompts_file runs need another scheduler",
        )
    if not str(cfg.prompts_file).strip():
        raise ConfigError("prompts_file", f"must be a file path (got {cfg.prompts_file!r})")


def rule_output(plan: Plan) -> None:
    output = plan.cfg.output
    fmt = output.format
    if FORMATS[fmt] not in sf.available_formats():
        raise ConfigError(
            "output.format",
            f"{fmt} is not supported by libsndfile {sf.__libsndfile_version__} (mp3 needs >= 1.1); use wav, flac, ogg",
        )
    subtype = output.get("subtype")
    valid_subtypes = sf.available_subtypes(FORMATS[fmt])
    if subtype is not None and subtype.upper() not in valid_subtypes:
        choices = ", ".join(sorted(valid_subtypes))
        raise ConfigError("output.subtype", f"{subtype!r} is not valid for {fmt}; choose one of {choices}")
    if output.get("dir") is not None:
        if not str(output.dir).strip():
            raise ConfigError("output.dir", f"must be a directory path (got {output.dir!r})")
        check_writable_dir(Path(str(output.dir)).expanduser(), "output.dir")


def rule_steps(plan: Plan) -> None:
    scheduler = plan.cfg.scheduler
    steps = plan.cfg.steps if plan.cfg.get("steps") is not None else scheduler.default_steps
    if steps < scheduler.get("min_steps", 1):
        raise ConfigError(
            "steps", f"scheduler={scheduler.name} needs at least {scheduler.min_steps} steps (got {steps})"
        )


def rule_scheduler_dependencies(plan: Plan) -> None:
    if plan.cfg.scheduler.class_name == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
        raise ConfigError("scheduler", "scheduler=dpm_sde needs the torchsde package (pip install torchsde)")


def rule_chain_names(plan: Plan) -> None:
    cfg = plan.cfg
    if not cfg.pipeline.chain:
        raise ConfigError("pipeline.chain", "must be a non-empty list of stage names")
    for name in cfg.pipeline.chain:
        if name not in cfg.stages:
            raise ConfigError("pipeline.chain", f"stage {name!r} has no entry under stages")


def rule_devices_exist(plan: Plan) -> None:
    keys = [("device", plan.cfg.device)]
    keys += [(f"stages.{name}.device", s.get("device")) for name, s in plan.cfg.stages.items()]
    for key, value in keys:
        kind = str(value or "").split(":")[0]
        if kind not in ("cuda", "mps"):
            continue
        info = plan.probe(kind)
        if info is None:
            raise ConfigError(key, f"{value!r} requested but no {kind.upper()} device is available; use device=cpu")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= info.count:
            raise ConfigError(key, f"{value!r} requested but only {info.count} {kind.upper()} device(s) exist")


def rule_half_precision_supported(plan: Plan) -> None:
    for stage, (device, dtype) in plan.placements.items():
        kind = device.split(":")[0]
        if kind == "cpu" and dtype == "fp16":
            raise ConfigError(
                dtype_key(plan.cfg, stage), f"fp16 is not supported on the CPU (stage {stage}); use fp32 or bf16"
            )
        if kind == "cuda" and dtype == "bf16":
            info = plan.info(device)
            if info is not None and not info.bf16:
                raise ConfigError(
                    dtype_key(plan.cfg, stage),
                    f"{info.name} has no bf16 support (stage {stage}); use fp16 or precision=auto",
                )


def rule_checkpoint(plan: Plan) -> None:
    """Which keys a checkpoint option needs (its files are checked when it is resolved, still before loading)."""
    ckpt = plan.cfg.checkpoint
    if str(ckpt.name).startswith("synthetic-"):
        if ckpt.get("synthetic") is None:
            raise ConfigError("checkpoint.synthetic", "required for a synthetic checkpoint")
    elif ckpt.name == "tiny":
        if ckpt.get("tiny") is None:
            raise ConfigError("checkpoint.tiny", "required for checkpoint=tiny")
    elif not ckpt.get("path") and not ckpt.get("repo_id"):
        raise ConfigError("checkpoint.path", "required for checkpoint=local (a diffusers-format AudioLDM 2 directory)")


#: Checked in this order, before the optimisations' own rules; device rules come after the device checks.
RULES: list[Callable[[Plan], None]] = [
    rule_prompts,
    rule_batch,
    rule_output,
    rule_steps,
    rule_scheduler_dependencies,
    rule_chain_names,
    rule_checkpoint,
    rule_devices_exist,
    rule_half_precision_supported,
]
