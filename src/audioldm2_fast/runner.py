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

from .attention import apply_attention_processors, attention_context
from .checkpoints.resolve import resolve_checkpoint
from .checkpoints.synthetic import make_store
from .compiling import compile_stage
from .config import negative_prompt_list, prompt_list, stage_placement, validate_config
from .offload import make_offload
from .schedulers import num_steps
from .stages.base import Stage
from .stages.registry import resolve_stage_class
from .state import GenerationState

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
    timings: dict[str, float] = field(default_factory=dict)

    def candidates(self, prompt_index: int) -> np.ndarray:
        """The candidates of one prompt, best first."""
        rows = np.arange(prompt_index * self.num_waveforms, (prompt_index + 1) * self.num_waveforms)
        if self.ranks is not None:
            rows = rows[np.argsort(self.ranks[rows])]
        return self.waveforms[rows]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the app's config with Hydra, as the command line would (without starting a Hydra run)."""
    from hydra import compose, initialize_config_dir

    from .paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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
        offloading = cfg.offload.mode != "none"
        for stage in self.stages:
            if offloading:  # never hold a whole model on the accelerator before the offload policy places it
                stage.load_device = torch.device(cfg.offload.get("offload_device", "cpu"))
            stage.setup()
            apply_attention_processors(stage, cfg)
        self.offload = make_offload(cfg.offload, self.stages)
        self.offload.setup()
        for stage in self.stages:
            compile_stage(stage, cfg.compile)
        self.load_time_s = time.perf_counter() - t0
        placement = ", ".join(f"{s.name}@{s.device}/{str(s.dtype).removeprefix('torch.')}" for s in self.stages)
        log.info("loaded %s in %.2f s (%s)", self.checkpoint_dir, self.load_time_s, placement)

    @classmethod
    def from_config(cls, overrides: Sequence[str] = ()) -> Generator:
        """Build from the app's configs and command-line style overrides."""
        cfg = compose_config(overrides)
        if cfg.output.get("dir") is None:
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
            with attention_context(self.cfg, stage.name):
                state = stage(state)
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
            timings=dict(state.timings),
        )

    def close(self) -> None:
        for stage in self.stages:
            stage.teardown()
