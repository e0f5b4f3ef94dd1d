"""Validation of a composed config, and the resolution of devices and dtypes.

``validate_config`` runs before any model is loaded. It reads no weights (a checkpoint directory's
``model_index.json`` at most) and raises ``ConfigError`` naming the offending key.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..runtime.devices import Probe, probe_device, resolve_device
from ..runtime.errors import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = {*DTYPES, "auto"}
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
TASKS = ("generate", "benchmark", "merge", "doctor")
#: Longest prompt accepted, in characters. Tokenizers keep only their first tokens (README, "Prompts").
MAX_PROMPT_CHARS = 10_000
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+|meta)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum} (got {value!r})")


def _number(cfg: DictConfig, key: str, minimum: float, strict: bool = False, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    bad = not _is_number(value) or (value <= minimum if strict else value < minimum)
    if bad:
        relation = ">" if strict else ">="
        raise ConfigError(key, f"must be a finite number {relation} {minimum} (got {value!r})")


def prompt_list(value: Any, key: str = "prompt") -> list[str]:
    """Normalise a prompt value (string or list of strings) to a non-empty list of non-blank strings."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple, ListConfig)):
        items = list(value)
    else:
        raise ConfigError(key, f"must be a string or a list of strings (got {type(value).__name__})")
    if not items:
        raise ConfigError(key, "must not be an empty list")
    for i, item in enumerate(items):
        where = key if isinstance(value, str) else f"{key}[{i}]"
        if not isinstance(item, str):
            raise ConfigError(where, f"must be a string (got {type(item).__name__})")
        if not item.strip():
            raise ConfigError(where, "must not be empty")
        check_prompt_text(item, where)
    return items


def check_prompt_text(text: str, key: str) -> None:
    """Refuse control characters (naming the first one's position) and prompts over ``MAX_PROMPT_CHARS``.

    Any other text is valid, right-to-left scripts and emoji included.
    """
    import unicodedata

    if len(text) > MAX_PROMPT_CHARS:
        raise ConfigError(key, f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    for pos, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            raise ConfigError(key, f"contains the control character U+{ord(char):04X} at position {pos}")


def negative_prompt_list(value: Any, num_prompts: int) -> list[str] | None:
    """None, one negative prompt for every prompt, or one per prompt."""
    if value is None:
        return None
    if isinstance(value, str):
        check_prompt_text(value, "negative_prompt")
        return [value] * num_prompts
    if not isinstance(value, (list, tuple, ListConfig)):
        raise ConfigError("negative_prompt", f"must be a string or a list of strings (got {type(value).__name__})")
    items = list(value)
    if len(items) != num_prompts:
        raise ConfigError(
            "negative_prompt",
            f"has {len(items)} entries but prompt has {num_prompts}; give one per prompt or one string",
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"negative_prompt[{i}]", f"must be a string (got {type(item).__name__})")
        check_prompt_text(item, f"negative_prompt[{i}]")
    return items


def _check_device(key: str, value: Any, allow_none: bool, probe: Probe) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ConfigError(key, f"must be auto, cpu, cuda, cuda:N or mps (got {value!r})")
    kind = value.split(":")[0]
    if kind in ("cuda", "mps"):
        info = probe(kind)
        if info is None:
            raise ConfigError(key, f"{value!r} requested but no {kind.upper()} device is available; use device=cpu")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= info.count:
            raise ConfigError(key, f"{value!r} requested but only {info.count} {kind.upper()} device(s) exist")


def precision_dtype(precision: str, device: torch.device, probe: Probe = probe_device) -> torch.dtype:
    """``auto``: bf16 on a CUDA GPU that has it, fp16 on other CUDA GPUs, fp32 elsewhere."""
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda":
        info = probe("cuda")
        return torch.bfloat16 if info is not None and info.bf16 else torch.float16
    return torch.float32


def stage_placement(cfg: DictConfig, stage: str, probe: Probe = probe_device) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a stage runs in.

    Device: ``stages.<stage>.device``, else the top-level ``device``. Dtype: ``stages.<stage>.dtype``, else fp32 for
    the stages in ``precision.keep_fp32`` when the precision is half, else the precision group's dtype.
    """
    scfg = cfg.stages.get(stage) or {}
    device = resolve_device(scfg.get("device") or cfg.device, probe)
    if scfg.get("dtype"):
        return device, DTYPES[scfg.dtype]
    dtype = precision_dtype(cfg.precision.dtype, device, probe)
    if dtype != torch.float32 and stage in (cfg.precision.get("keep_fp32") or []):
        dtype = torch.float32
    return device, dtype


def validate_config(cfg: DictConfig, probe: Probe = probe_device) -> None:
    """Check every user-settable value and their combinations; raise ConfigError naming the first offending key.

    ``probe`` describes the devices; tests pass one that describes hardware this machine does not have.
    """
    if cfg.get("task") not in TASKS:
        raise ConfigError("task", f"unknown task {cfg.get('task')!r}; choose one of {', '.join(TASKS)}")
    if cfg.task == "merge":
        from ..batch.merge import validate_merge_config

        return validate_merge_config(cfg)
    from ..batch.items import validate_batch_config

    validate_batch_config(cfg)
    prompt = cfg.get("prompt")
    if prompt is None and cfg.get("prompts_file") is None and cfg.task != "doctor":  # doctor needs no prompt
        raise ConfigError("prompt", 'required, e.g. prompt="rain on a tin roof" (or prompts_file=prompts.txt)')
    if prompt is not None:
        prompts = prompt_list(prompt)
        negative_prompt_list(cfg.get("negative_prompt"), len(prompts))

    _int(cfg, "seed", 0)
    if cfg.seed >= 2**63:
        raise ConfigError("seed", f"must be below 2**63 (got {cfg.seed})")
    _int(cfg, "num_waveforms", 1)
    _number(cfg, "audio_length_s", 0.0, strict=True, allow_none=True)
    _number(cfg, "guidance_scale", 0.0)
    _int(cfg, "steps", 1, allow_none=True)
    _number(cfg, "eta", 0.0)
    _int(cfg, "max_new_tokens", 1, allow_none=True)
    _check_device("device", cfg.get("device"), allow_none=False, probe=probe)
    if not isinstance(cfg.get("progress", True), bool):
        raise ConfigError("progress", f"must be true or false (got {cfg.get('progress')!r})")

    _validate_output(cfg)
    if cfg.task == "benchmark":
        _validate_benchmark(cfg)
    _validate_memory(cfg)
    _validate_scheduler(cfg)
    if cfg.precision.get("dtype") not in PRECISIONS:
        raise ConfigError(
            "precision.dtype", f"must be one of {sorted(PRECISIONS)} (got {cfg.precision.get('dtype')!r})"
        )
    _validate_stages(cfg, probe)
    _validate_checkpoint(cfg)

    from .rules import check_combinations

    check_combinations(cfg, probe)


def _validate_output(cfg: DictConfig) -> None:
    import soundfile as sf

    fmt = cfg.output.get("format")
    if fmt not in FORMATS:
        raise ConfigError("output.format", f"must be one of {sorted(FORMATS)} (got {fmt!r})")
    if FORMATS[fmt] not in sf.available_formats():
        raise ConfigError(
            "output.format",
            f"{fmt} is not supported by libsndfile {sf.__libsndfile_version__} (mp3 needs >= 1.1); use wav, flac, ogg",
        )
    subtype = cfg.output.get("subtype")
    valid_subtypes = sf.available_subtypes(FORMATS[fmt])
    if subtype is not None and (not isinstance(subtype, str) or subtype.upper() not in valid_subtypes):
        choices = ", ".join(sorted(valid_subtypes))
        raise ConfigError("output.subtype", f"{subtype!r} is not valid for {fmt}; choose one of {choices}")
    _int(cfg, "output.name_max_length", 8)
    _validate_finishing(cfg)
    out_dir = cfg.output.get("dir")
    if out_dir is not None:
        from pathlib import Path

        if not isinstance(out_dir, str) or not out_dir.strip():
            raise ConfigError("output.dir", f"must be a directory path (got {out_dir!r})")
        from ..runtime.writability import check_writable_dir

        check_writable_dir(Path(out_dir).expanduser(), "output.dir")


def _validate_finishing(cfg: DictConfig) -> None:
    from ..outputs.finishing import NORMALIZE

    for key in ("spectrogram", "report", "trim"):
        if not isinstance(cfg.output.get(key, True), bool):
            raise ConfigError(f"output.{key}", f"must be true or false (got {cfg.output.get(key)!r})")
    mode = cfg.output.get("normalize", "none")
    if mode not in NORMALIZE:
        raise ConfigError("output.normalize", f"must be one of {', '.join(NORMALIZE)} (got {mode!r})")
    _number(cfg, "output.headroom_db", 0.0)
    value = cfg.output.get("loudness_lufs", -14.0)
    if not _is_number(value) or not -70.0 <= value <= 0.0:
        raise ConfigError("output.loudness_lufs", f"must be a number between -70 and 0 LUFS (got {value!r})")


def _validate_memory(cfg: DictConfig) -> None:
    if cfg.get("memory") is None:
        return
    _number(cfg, "memory.budget_gb", 0.0, strict=True, allow_none=True)
    for key in (
        "unet_batch_size",
        "decode_batch_size",
        "attention_chunk_size",
        "vae_chunk_frames",
        "vocoder_chunk_frames",
    ):
        _int(cfg, f"memory.{key}", 1, allow_none=True)
    for key in ("vae_overlap_frames", "vocoder_overlap_frames"):
        _int(cfg, f"memory.{key}", 0)


def _validate_benchmark(cfg: DictConfig) -> None:
    _int(cfg, "benchmark.warmup", 0)
    _int(cfg, "benchmark.runs", 1)
    if cfg.benchmark.get("reference") not in (None, "diffusers"):
        raise ConfigError("benchmark.reference", f"must be null or diffusers (got {cfg.benchmark.reference!r})")
    for key in ("write_audio", "save", "fp32_check"):
        if not isinstance(cfg.benchmark.get(key), bool):
            raise ConfigError(f"benchmark.{key}", f"must be true or false (got {cfg.benchmark.get(key)!r})")


def _validate_scheduler(cfg: DictConfig) -> None:
    from ..stages.schedulers import scheduler_class

    scheduler_class(cfg.scheduler)  # raises ConfigError for unknown or incompatible classes
    _int(cfg, "scheduler.default_steps", 1)
    min_steps = cfg.scheduler.get("min_steps", 1)
    steps = cfg.steps if cfg.get("steps") is not None else cfg.scheduler.default_steps
    if steps < min_steps:
        raise ConfigError("steps", f"scheduler={cfg.scheduler.name} needs at least {min_steps} steps (got {steps})")
    if not isinstance(cfg.scheduler.get("config") or {}, (dict, DictConfig)):
        raise ConfigError("scheduler.config", "must be a mapping of scheduler config values")


def _validate_stages(cfg: DictConfig, probe: Probe) -> None:
    from ..stages.registry import resolve_stage_class

    chain = cfg.pipeline.get("chain")
    if not isinstance(chain, (list, ListConfig)) or not chain:
        raise ConfigError("pipeline.chain", "must be a non-empty list of stage names")
    for name in chain:
        if name not in (cfg.get("stages") or {}):
            raise ConfigError("pipeline.chain", f"stage {name!r} has no entry under stages")
    for name, scfg in cfg.stages.items():
        resolve_stage_class(scfg.get("impl"), key=f"stages.{name}.impl")
        _check_device(f"stages.{name}.device", scfg.get("device"), allow_none=True, probe=probe)
        dtype = scfg.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"stages.{name}.dtype", f"must be one of {sorted(DTYPES)} or null (got {dtype!r})")


def _validate_checkpoint(cfg: DictConfig) -> None:
    from pathlib import Path

    from ..checkpoints.resolve import read_model_index

    ckpt = cfg.checkpoint
    if not isinstance(ckpt.get("allow_pickle", False), bool):
        raise ConfigError("checkpoint.allow_pickle", f"must be true or false (got {ckpt.get('allow_pickle')!r})")
    if str(ckpt.get("name") or "").startswith("synthetic-"):
        from ..checkpoints.synthetic import SYNTHETIC_CONFIGS

        config = (ckpt.get("synthetic") or {}).get("config")
        if config not in SYNTHETIC_CONFIGS:
            raise ConfigError("checkpoint.synthetic.config", f"must be one of {SYNTHETIC_CONFIGS} (got {config!r})")
        return
    if ckpt.get("name") == "tiny":
        tiny = ckpt.get("tiny") or {}
        if tiny.get("language_model_class", "GPT2Model") not in ("GPT2Model", "GPT2LMHeadModel"):
            raise ConfigError(
                "checkpoint.tiny.language_model_class",
                f"must be GPT2Model or GPT2LMHeadModel (got {tiny.get('language_model_class')!r})",
            )
        return
    if ckpt.get("path"):
        read_model_index(Path(str(ckpt.path)).expanduser())
    elif not ckpt.get("repo_id"):
        raise ConfigError("checkpoint.path", "required for checkpoint=local (a diffusers-format AudioLDM 2 directory)")
