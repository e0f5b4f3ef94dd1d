"""The Generator: validates a config, resolves the checkpoint, builds the stage chain and runs it.

It plays the Lightning Trainer's part: it owns placement and timing; the stages own the model work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .accel.attention import apply_attention_processors, attention_context
from .accel.compile import compile_stage
from .accel.offload import make_offload
from .checkpoints.resolve import resolve_checkpoint
from .checkpoints.synthetic import make_store
from .config.validate import negative_prompt_list, prompt_list, stage_placement, validate_config
from .runtime.progress import progress_bar, silence_library_bars
from .stages.base import Stage
from .stages.finite import check_stage_output, describe, tensor_fields
from .stages.registry import resolve_stage_class
from .stages.schedulers import num_steps
from .stages.state import GenerationState

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """Waveforms in generation order (prompt-major, then candidate), with ranking and timing."""

    waveforms: np.ndarray  # (num_prompts * num_waveforms, samples) float32
    sample_rate: int
    prompts: list[str]
    num_waveforms: int
    scores: np.ndarray | None
    ranks: np.ndarray | None
    records: list[dict[str, Any]] = field(default_factory=list)  # one per written file, best first per prompt
    failed: list[str] = field(default_factory=list)  # one line per item dropped for non-finite values
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # the call's resolved settings (seed, steps, ...)

    def candidates(self, prompt_index: int) -> np.ndarray:
        """The candidates of one prompt, best first."""
        rows = np.arange(prompt_index * self.num_waveforms, (prompt_index + 1) * self.num_waveforms)
        if self.ranks is not None:
            rows = rows[np.argsort(self.ranks[rows])]
        return self.waveforms[rows]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", config_dir: Path | None = None
) -> DictConfig:
    """Compose the app's config with Hydra, as the command line would (without starting a Hydra run).

    ``config_dir`` is searched as ``--config-dir`` is: for the primary config and for group options.
    """
    from hydra import compose, initialize_config_dir

    from .config.paths import conf_dir

    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir is not None else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*extra, *overrides])


class Generator:
    """Text-to-audio with AudioLDM 2 as a chain of configured stages.

    >>> gen = Generator.from_config(["checkpoint=tiny", "prompt=rain", "output.dir=/tmp/out"])
    >>> result = gen.generate()
    """

    def __init__(self, cfg: DictConfig):
        validate_config(cfg)
        self.cfg = cfg
        t0 = time.perf_counter()
        self.checkpoint_dir: Path = resolve_checkpoint(cfg.checkpoint)
        self.store = make_store(cfg.checkpoint, self.checkpoint_dir)
        self.stages: list[Stage] = []
        for name in cfg.pipeline.chain:
            cls = resolve_stage_class(cfg.stages[name].impl, key=f"stages.{name}.impl")
            device, dtype = stage_placement(cfg, name)
            self.stages.append(cls(name, device, dtype, self.store, cfg))
        budget = (cfg.get("memory") or {}).get("budget_gb") is not None
        # Never hold a whole model on the accelerator before the offload policy (or a budget's plan) places it.
        offloading = cfg.offload.mode != "none" or budget
        silence_library_bars()
        bar = progress_bar(self.stages, cfg=cfg, desc="loading", unit="stage")
        for stage in bar:
            bar.set_postfix_str(stage.name)
            if offloading:
                stage.load_device = torch.device(cfg.offload.get("offload_device", "cpu"))
            stage.setup()
        self.memory_plan: dict[str, Any] | None = None
        if budget:
            from .accel.memory_plan import plan_for_generator

            self.memory_plan = plan_for_generator(cfg, self.stages)
        for stage in self.stages:
            apply_attention_processors(stage, cfg)
        self.offload = make_offload(cfg.offload, self.stages)
        self.offload.setup()
        for stage in self.stages:
            compile_stage(stage, cfg.compile)
        self.load_time_s = time.perf_counter() - t0
        placement = ", ".join(f"{s.name}@{s.device}/{str(s.dtype).removeprefix('torch.')}" for s in self.stages)
        log.info("loaded %s in %.2f s (%s)", self.checkpoint_dir, self.load_time_s, placement)

    @classmethod
    def from_config(cls, overrides: Sequence[str] = (), write: bool = True) -> Generator:
        """Build from the app's configs and command-line style overrides, validated as the command line does.

        Bad overrides raise the CLI's ``ConfigError``. ``write=False`` leaves the writer out of the chain: nothing is
        written and ``output.dir`` is not needed; the result still holds the waveforms and their metadata.
        """
        from .cli import check_overrides

        overrides = list(overrides)
        check_overrides(overrides)
        cfg = compose_config(overrides)
        if not write:
            cfg.pipeline.chain = [name for name in cfg.pipeline.chain if name != "writer"]
        elif cfg.output.get("dir") is None:
            cfg.output.dir = time.strftime("outputs/%Y-%m-%d/%H-%M-%S")
        return cls(cfg)

    def new_state(self, **request: Any) -> GenerationState:
        cfg = OmegaConf.merge(self.cfg, request) if request else self.cfg
        if request:
            validate_config(cfg)
        prompts = prompt_list(cfg.prompt)
        return GenerationState(
            prompts=prompts,
            negative_prompts=negative_prompt_list(cfg.get("negative_prompt"), len(prompts)),
            num_waveforms=int(cfg.num_waveforms),
            seed=int(cfg.seed),
            guidance_scale=float(cfg.guidance_scale),
            steps=num_steps(cfg),
            eta=float(cfg.eta),
            audio_length_s=None if cfg.audio_length_s is None else float(cfg.audio_length_s),
            max_new_tokens=cfg.get("max_new_tokens"),
            generator=torch.Generator("cpu").manual_seed(int(cfg.seed)),
        )

    def generate(self, **request: Any) -> GenerationResult:
        """Run the chain once. Keyword arguments override request keys (prompt, negative_prompt, seed, ...)."""
        return self.run(self.new_state(**request))

    def run(self, state: GenerationState) -> GenerationResult:
        """Run the chain once on a prepared state (``new_state``, possibly with per-item fields set)."""
        for stage in self.stages:
            t0 = time.perf_counter()
            self.offload.before(stage)
            before = tensor_fields(state)
            try:
                with attention_context(self.cfg, stage.name):
                    state = stage(state)
            except torch.OutOfMemoryError as exc:
                from .accel.oom import describe_oom

                raise describe_oom(exc, stage.name, stage.device, self.cfg) from None
            for item in check_stage_output(state, stage.name, before):
                log.error("%s", describe(state, item))
            _synchronize(stage.device)
            self.offload.after(stage)
            state.timings[stage.name] = time.perf_counter() - t0
        return GenerationResult(
            waveforms=state.waveforms.numpy(),
            sample_rate=int(state.sample_rate),
            prompts=state.prompts,
            num_waveforms=state.num_waveforms,
            scores=None if state.scores is None else state.scores.numpy(),
            ranks=None if state.ranks is None else state.ranks.numpy(),
            records=state.records,
            failed=[describe(state, i) for i in sorted(state.failed)],
            timings=dict(state.timings),
            metadata=self._metadata(state),
        )

    def _metadata(self, state: GenerationState) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "prompts": list(state.prompts),
            "negative_prompts": state.negative_prompts,
            "seed": state.seed,
            "num_waveforms": state.num_waveforms,
            "steps": state.steps,
            "scheduler": cfg.scheduler.name,
            "guidance_scale": state.guidance_scale,
            "eta": state.eta,
            "audio_length_s": state.waveform_length / state.sample_rate,
            "num_samples": int(state.waveforms.shape[1]),
            "checkpoint": cfg.checkpoint.get("repo_id") or cfg.checkpoint.get("path") or cfg.checkpoint.name,
            "precision": cfg.precision.name,
            "stages": {s.name: f"{s.device}/{str(s.dtype).removeprefix('torch.')}" for s in self.stages},
        }

    def close(self) -> None:
        for stage in self.stages:
            stage.teardown()
