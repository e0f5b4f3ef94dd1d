"""VAE decoder: latents -> mel spectrogram."""

from __future__ import annotations

import torch

from ..state import GenerationState
from .base import Stage
from .registry import register_stage


@register_stage("vae_decoder")
class VaeDecoder(Stage):
    components = ("vae",)

    def compile_targets(self):
        return [(self.modules["vae"], "decoder")]

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        vae = self.modules["vae"]
        latents = self.to_stage(state.latents) / vae.config.scaling_factor
        state.mel = vae.decode(latents).sample
        return state
