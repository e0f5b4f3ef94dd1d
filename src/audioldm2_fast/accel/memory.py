"""``memory``: long audio in bounded memory. Sub-batches and time chunks (read by the stages through their settings),
UNet attention in query chunks, and ``budget_gb``, which plans all of them (and an offload mode) to fit a budget.

The planner itself is :mod:`.memory_plan`; this module is what the config sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from ..config.fields import setting
from ..config.optimization import Optimization, Plan
from ..runtime.errors import ConfigError

if TYPE_CHECKING:
    from ..stages.base import Stage


@dataclass(kw_only=True)
class Memory(Optimization):
    budget_gb: float | None = setting(gt=0)
    unet_batch_size: int | None = setting(ge=1)
    attention_chunk_size: int | None = setting(ge=1)
    decode_batch_size: int | None = setting(ge=1)
    vae_chunk_frames: int | None = setting(ge=1)
    vae_overlap_frames: int = setting(ge=0)
    vocoder_chunk_frames: int | None = setting(ge=1)
    vocoder_overlap_frames: int = setting(ge=0)

    order = 10  # swaps attention processors, like attention=sliced, before anything is placed or compiled

    def check(self, plan: Plan) -> None:
        backend = plan.setting("attention", "backend")
        if self.attention_chunk_size is not None and backend in ("sliced", "xformers"):
            raise ConfigError(
                "memory.attention_chunk_size",
                f"replaces the UNet's attention processors, as attention={backend} does; use one of the two",
            )

    def resolve(self, cfg: DictConfig, chain: Any) -> tuple[DictConfig, dict[str, Any] | None]:
        """With ``budget_gb``: the cheapest settings whose estimated peak fits, as a new config (README: long audio)."""
        if self.budget_gb is None:
            return cfg, None
        from .memory_plan import plan_for_chain  # traces modules on meta: torch is loaded by now

        return plan_for_chain(cfg, chain)

    def setup(self, stages: list[Stage]) -> None:
        if self.attention_chunk_size is None:
            return
        from .chunked_attention import ChunkedAttnProcessor  # the stages are loaded: torch is too

        for stage in stages:
            unet = stage.modules.get("unet")
            if unet is not None:
                unet.set_attn_processor(ChunkedAttnProcessor(self.attention_chunk_size))
