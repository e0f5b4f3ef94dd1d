"""HiFi-GAN vocoder: mel spectrogram -> waveform, trimmed to the requested length, float32 on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..accel.chunking import chunked_along_time, run_in_sub_batches
from .base import Stage
from .registry import register_stage
from .state import GenerationState


def vocode(vocoder: torch.nn.Module, mel: torch.Tensor, memory: Mapping[str, Any]) -> torch.Tensor:
    """Mel (batch, frames, bins) -> waveforms, in ``memory.decode_batch_size`` rows and vocoder time chunks."""
    return run_in_sub_batches(
        lambda rows: chunked_along_time(
            vocoder,
            rows,
            dim=1,
            out_dim=1,
            scale=int(np.prod(vocoder.config.upsample_rates)),
            chunk=memory.get("vocoder_chunk_frames"),
            overlap=int(memory.get("vocoder_overlap_frames") or 0),
        ),
        memory.get("decode_batch_size"),
        mel,
    )


@register_stage("vocoder")
class Vocoder(Stage):
    components = ("vocoder",)

    def compile_targets(self):
        return [(self.modules, "vocoder")]

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        vocoder = self.modules["vocoder"]
        mel = self.to_stage(state.mel)
        if mel.dim() == 4:
            mel = mel.squeeze(1)
        waveforms = vocode(vocoder, mel, self.cfg.get("memory") or {})
        waveforms = waveforms.cpu().float()
        # output.trim=false keeps the vocoder's whole output (the length rounded up to the latent grid).
        state.waveforms = waveforms[:, : state.waveform_length] if self.cfg.output.get("trim", True) else waveforms
        state.sample_rate = int(vocoder.config.sampling_rate)
        return state
