"""Stages for batch tests, named in config as ``batch_stages:<Class>``.

``KillingWriter``: with ``KILL_AT_ROW=n``, the process kills itself (SIGKILL) while appending the n-th manifest row,
after that row's audio file is in place: the rows before it in the same append are written, as a write cut short
would leave them. ``NaNVocoder``: non-finite audio for prompts that contain "nan".
"""

from __future__ import annotations

import os
import signal

from audioldm2_fast.stages import writer
from audioldm2_fast.stages.vocoder import Vocoder
from audioldm2_fast.stages.writer import Writer

_append = writer.append_rows


class KillingWriter(Writer):
    def setup(self) -> None:
        super().setup()
        kill_at = int(os.environ["KILL_AT_ROW"])
        count = [0]

        def append(path, rows):
            if count[0] < kill_at <= count[0] + len(rows):
                _append(path, rows[: kill_at - count[0] - 1])
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += len(rows)
            _append(path, rows)

        writer.append_rows = append


class NaNVocoder(Vocoder):
    def __call__(self, state):
        state = super().__call__(state)
        for i in range(len(state.waveforms)):
            if "nan" in state.prompts[state.prompt_index(i)]:
                state.waveforms[i] = float("nan")
        return state
