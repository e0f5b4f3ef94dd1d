"""The schema of every config key that is not an optimisation's (those are declared by their own ``accel`` module).

Defaults live in the YAML files under ``conf/`` (where users read them, with their comments); the types, allowed
values and bounds live here, once. ``tests`` check that every YAML option has exactly the keys of its schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import setting

TASKS = ("generate", "benchmark", "merge", "doctor", "serve")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
NORMALIZE = ("none", "peak", "loudness")
#: The published architectures whose configs ship in the package (``checkpoint=synthetic-*``).
SYNTHETIC_CONFIGS = ("audioldm2", "audioldm2-large", "audioldm2-music")
DEVICE_PATTERN = r"auto|cpu|mps|cuda|cuda:\d+|meta"
DEVICE_WORDS = "auto, cpu, cuda, cuda:N or mps"
#: The diffusers schedulers AudioLDM 2 can use (``KarrasDiffusionSchedulers``, which a test keeps this in step with),
#: listed here so that checking a name needs no diffusers import.
SCHEDULER_CLASSES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)


@dataclass(frozen=True, kw_only=True)
class TinyCheckpoint:
    seed: int = setting(ge=0)
    language_model_class: str = setting(choices=("GPT2Model", "GPT2LMHeadModel"))


@dataclass(frozen=True, kw_only=True)
class SyntheticCheckpoint:
    config: str = setting(choices=SYNTHETIC_CONFIGS)
    seed: int = setting(ge=0)
    init_scale: dict[str, dict[str, float]] | None = setting()


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """``checkpoint``: where the weights come from (a hub repo, a local directory, or built in code)."""

    name: str = setting()
    repo_id: str | None = setting()
    revision: str | None = setting()
    path: str | None = setting()
    cache_dir: str | None = setting()
    allow_pickle: bool = setting()
    tiny: TinyCheckpoint | None = setting()
    synthetic: SyntheticCheckpoint | None = setting()

    @property
    def label(self) -> str:
        """How runs name the checkpoint: its hub id, its path, or its option name."""
        return self.repo_id or self.path or self.name


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """``scheduler``: a diffusers scheduler built from the checkpoint's own scheduler config plus ``config``."""

    name: str = setting()
    class_name: str = setting(choices=SCHEDULER_CLASSES)
    default_steps: int = setting(ge=1)
    min_steps: int = setting(ge=1)
    config: dict[str, Any] = setting()

    def steps(self, requested: int | None) -> int:
        """``steps``, or this option's default when ``steps`` is null."""
        return int(requested if requested is not None else self.default_steps)


@dataclass(frozen=True, kw_only=True)
class PrecisionConfig:
    """``precision``: the dtype of every stage; ``keep_fp32`` stages stay float32 when it is half."""

    name: str = setting()
    dtype: str = setting(choices=(*DTYPE_NAMES, "auto"))
    keep_fp32: list[str] = setting()


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    name: str = setting()
    chain: list[str] = setting()


@dataclass(frozen=True, kw_only=True)
class StagePlacement:
    """The keys every ``stages.<name>`` entry has; a stage class adds its own (``Stage.Settings``)."""

    impl: str = setting()
    device: str | None = setting(pattern=DEVICE_PATTERN, describe=DEVICE_WORDS)
    dtype: str | None = setting(choices=DTYPE_NAMES)


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    index: int = setting(ge=0)
    count: int = setting(ge=1)


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """``output``: where and how files are written."""

    dir: str | None = setting()
    format: str = setting(choices=tuple(FORMATS))
    subtype: str | None = setting()
    name_max_length: int = setting(ge=8)
    normalize: str = setting(choices=NORMALIZE)
    headroom_db: float = setting(ge=0)
    loudness_lufs: float = setting(ge=-70, le=0)
    trim: bool = setting()
    spectrogram: bool = setting()
    report: bool = setting()


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """``benchmark``: ``task=benchmark``'s warm-up, runs and reference."""

    warmup: int = setting(ge=0)
    runs: int = setting(ge=1)
    reference: str | None = setting(choices=("diffusers",))
    reference_compile: str = setting("auto", choices=("auto", "none", "reduce-overhead"))
    fp32_check: bool = setting()
    write_audio: bool = setting()
    save: bool = setting()


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """``server``: ``task=serve``'s address, batching, queue and request limits (README, "Serving")."""

    host: str = setting()
    port: int = setting(ge=0, le=65535)
    api_key: str | None = setting()
    batch_window_ms: float = setting(ge=0)
    max_batch: int = setting(ge=1)
    max_queue: int = setting(ge=1)
    max_audio_length_s: float = setting(gt=0)
    max_num_waveforms: int = setting(ge=1)
    max_steps: int = setting(ge=1)
    max_prompt_chars: int = setting(ge=1, le=10_000)
    warmup: list[dict[str, Any]] = setting()


@dataclass(frozen=True, kw_only=True)
class Config:
    """The root keys. Nodes whose YAML names a ``_target_`` are optimisations, checked by their own schema."""

    task: str = setting(choices=TASKS)
    prompt: Any = setting()  # a string or a list of strings: config.prompts checks it
    negative_prompt: Any = setting()
    seed: int = setting(ge=0, lt=2**63)
    num_waveforms: int = setting(ge=1)
    audio_length_s: float | None = setting(gt=0)
    guidance_scale: float = setting(ge=0)
    steps: int | None = setting(ge=1)
    eta: float = setting(ge=0)
    max_new_tokens: int | None = setting(ge=1)
    device: str = setting(pattern=DEVICE_PATTERN, describe=DEVICE_WORDS)
    progress: bool = setting()
    prompts_file: str | None = setting()
    batch_size: int = setting(ge=1)
    shard: ShardConfig = setting()
    dir: str | None = setting()
    output: OutputConfig = setting()
    checkpoint: CheckpointConfig = setting()
    scheduler: SchedulerConfig = setting()
    precision: PrecisionConfig = setting()
    pipeline: PipelineConfig = setting()
    stages: dict[str, Any] = setting()
    benchmark: BenchmarkConfig = setting()
    server: ServerConfig = setting()
