"""A writer that kills its own process (SIGKILL) at a chosen manifest row: ``batch_kill:KillingWriter``.

``KILL_AT_ROW=n``: the process dies while appending the n-th manifest row, after that row's audio file is in place.
"""

from __future__ import annotations

import os
import signal

from audioldm2_fast.stages import writer
from audioldm2_fast.stages.writer import Writer

_append = writer.append_jsonl


class KillingWriter(Writer):
    def setup(self) -> None:
        super().setup()
        kill_at = int(os.environ["KILL_AT_ROW"])
        count = [0]

        def append(path, row):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            _append(path, row)

        writer.append_jsonl = append
