"""HiFi-GAN vocoder: mel spectrogram -> waveform, trimmed to the requested length, float32 on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config.fields import setting
from .base import Stage, StageSettings
from .chunks import chunked_along_time, run_in_sub_batches
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


@dataclass(frozen=True, kw_only=True)
class VocoderSettings(StageSettings):
    decode_batch_size: int | None = setting(ge=1)
    vocoder_chunk_frames: int | None = setting(ge=1)
    vocoder_overlap_frames: int = setting(ge=0)


class Vocoder(Stage):
    components = ("vocoder",)
    reads = ("mel", "waveform_length")
    writes = ("waveforms", "sample_rate")
    Settings = VocoderSettings
    graphed = ("waveform",)

    def compile_targets(self):
        return [(self.modules, "vocoder")]

    @torch.no_grad()
    def waveform(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel (batch, frames, bins) in, waveforms out on this stage's device: tensors only (``graphs`` may capture
        it)."""
        return vocode(self.modules["vocoder"], mel, vars(self.settings))

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        vocoder = self.modules["vocoder"]
        mel = self.to_stage(state.mel)
        if mel.dim() == 4:
            mel = mel.squeeze(1)
        waveforms = self.waveform(mel).cpu().float()
        # trim=false (output.trim) keeps the vocoder's whole output (the length rounded up to the latent grid).
        state.waveforms = waveforms[:, : state.waveform_length] if state.trim else waveforms
        state.sample_rate = int(vocoder.config.sampling_rate)
        return state
