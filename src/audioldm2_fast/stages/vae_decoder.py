"""VAE decoder: latents -> mel spectrogram."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config.fields import setting
from .base import Stage, StageSettings
from .chunks import chunked_along_time, run_in_sub_batches
from .state import GenerationState


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, memory: Mapping[str, Any]) -> torch.Tensor:
    """Scaled latents -> mel, in ``memory.decode_batch_size`` rows and ``memory.vae_chunk_frames`` time chunks."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return run_in_sub_batches(
        lambda rows: chunked_along_time(
            lambda x: vae.decode(x).sample,
            rows,
            dim=2,
            out_dim=2,
            scale=factor,
            chunk=memory.get("vae_chunk_frames"),
            overlap=int(memory.get("vae_overlap_frames") or 0),
        ),
        memory.get("decode_batch_size"),
        latents,
    )


@dataclass(frozen=True, kw_only=True)
class VaeDecoderSettings(StageSettings):
    decode_batch_size: int | None = setting(ge=1)
    vae_chunk_frames: int | None = setting(ge=1)
    vae_overlap_frames: int = setting(ge=0)


class VaeDecoder(Stage):
    components = ("vae",)
    reads = ("latents",)
    writes = ("mel",)
    Settings = VaeDecoderSettings
    graphed = ("decode",)

    def compile_targets(self):
        return [(self.modules["vae"], "decoder")]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents in, mel out: tensors only (the ``graphs`` optimisation may capture it)."""
        vae = self.modules["vae"]
        return decode_latents(vae, latents / vae.config.scaling_factor, vars(self.settings))

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        state.mel = self.decode(self.to_stage(state.latents))
        return state
