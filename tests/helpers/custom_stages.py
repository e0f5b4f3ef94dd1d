"""A user-defined stage, imported from config as ``custom_stages:HalfVolumeVocoder`` (no edits to the package)."""

from __future__ import annotations

import torch

from audioldm2_fast.stages.base import Stage
from audioldm2_fast.stages.denoiser import Denoiser
from audioldm2_fast.stages.text_encoders import TextEncoders
from audioldm2_fast.stages.vocoder import Vocoder


class HalfVolumeVocoder(Vocoder):
    def __call__(self, state):
        state = super().__call__(state)
        state.waveforms = state.waveforms * 0.5
        return state


class NaNDenoiser(Denoiser):
    """Puts a NaN into the latents of the last prompt (for the non-finite checks)."""

    def __call__(self, state):
        state = super().__call__(state)
        last = (state.batch_size - 1) * state.num_waveforms
        state.latents[last, 0, 0, 0] = float("nan")
        return state


class NaNTextEncoders(TextEncoders):
    """Puts an Inf into the T5 embedding of the first prompt (a text-side row: every candidate of it fails)."""

    def __call__(self, state):
        state = super().__call__(state)
        positives = state.batch_size if state.do_classifier_free_guidance else 0
        state.t5_embeds[positives, 0, 0] = float("inf")
        return state


class SilentSecondVocoder(Vocoder):
    """Silences the second waveform."""

    def __call__(self, state):
        state = super().__call__(state)
        state.waveforms[1] = 0.0
        return state


class OutOfMemoryVocoder(Vocoder):
    """Fails as a CUDA allocation does when the device is full."""

    def __call__(self, state):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB"
        )


class EmptyStage(Stage):
    """A Stage subclass that implements nothing (refused when a chain names it)."""


class CpuAllocationFailureVocoder(Vocoder):
    """Fails as the CPU allocator does when the machine has no memory left (a plain RuntimeError)."""

    def __call__(self, state):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
        )
