"""VAE decoder: latents -> mel spectrogram."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..accel.chunking import chunked_along_time, run_in_sub_batches
from .base import Stage
from .registry import register_stage
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


@register_stage("vae_decoder")
class VaeDecoder(Stage):
    components = ("vae",)

    def compile_targets(self):
        return [(self.modules["vae"], "decoder")]

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        vae = self.modules["vae"]
        latents = self.to_stage(state.latents) / vae.config.scaling_factor
        state.mel = decode_latents(vae, latents, self.cfg.get("memory") or {})
        return state
