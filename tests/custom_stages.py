"""A user-defined stage, imported from config as ``custom_stages:HalfVolumeVocoder`` (no edits to the package)."""

from __future__ import annotations

from audioldm2_fast.stages.vocoder import Vocoder


class HalfVolumeVocoder(Vocoder):
    def __call__(self, state):
        state = super().__call__(state)
        state.waveforms = state.waveforms * 0.5
        return state
