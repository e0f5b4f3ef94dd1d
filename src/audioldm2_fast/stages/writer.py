"""Write one audio file per waveform and one ``manifest.jsonl`` row per file."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.fields import setting
from ..config.schema import OutputConfig
from ..outputs.files import prompt_slug, publish_audio
from ..outputs.finishing import finish_audio, trim_record
from ..outputs.manifest import append_rows
from ..outputs.provenance import provenance, save_config
from ..outputs.report import write_run_report
from ..outputs.spectrogram import write_spectrogram
from ..runtime.errors import OutputError
from .base import Stage, StageSettings
from .finite import SILENCE_DBFS, is_silent
from .state import GenerationState

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WriterSettings(StageSettings):
    output: OutputConfig = setting()


class Writer(Stage):
    reads = ("waveforms", "sample_rate", "run")
    writes = ("records",)
    Settings = WriterSettings

    def output_dir(self, state: GenerationState) -> Path:
        out = state.output_dir or self.settings.output.dir
        if not out:
            raise OutputError("output.dir: not set (the command line sets it to the Hydra run dir)")
        path = Path(str(out)).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output.dir: cannot create {str(path)!r}: {exc.strerror or exc}") from None
        return path

    def __call__(self, state: GenerationState) -> GenerationState:
        out_dir = self.output_dir(state)
        output = self.settings.output
        fmt = state.output_format or output.format
        subtype = output.subtype if fmt == output.format else None  # a subtype belongs to its format
        waveforms = state.waveforms.numpy()
        for i, w in enumerate(waveforms):  # a chain run outside the Generator has no per-stage check
            if i not in state.failed and not np.isfinite(w).all():
                state.failed[i] = f"stage {self.name}: the waveform contains NaN or Inf"
        order = [i for i in self._order(state) if i not in state.failed]
        try:
            cfg_hash = save_config(state.run.config_yaml, out_dir) if order else ""
        except OSError as exc:
            raise OutputError(f"output.dir: cannot write in {str(out_dir)!r}: {exc.strerror or exc}") from None
        manifest = out_dir / state.manifest
        pending: list[dict] = []
        for k, i in enumerate(order):
            p = state.prompt_index(i)
            if state.item_ids:  # batch runs: names that resume can find again
                stem = f"{state.item_ids[p]}_c{state.candidate_index(i)}"
            else:
                slug = prompt_slug(state.prompts[p], output.name_max_length)
                stem = f"{slug}_s{state.seed}_c{state.candidate_index(i)}"
            journal = state.item_journals[p] if state.item_journals else None
            try:
                audio, finishing = finish_audio(
                    waveforms[i], state.sample_rate, output.normalize, output.headroom_db, output.loudness_lufs
                )
                path = publish_audio(out_dir, stem, audio, state.sample_rate, fmt, subtype, journal)
                row = self._row(state, i, path, out_dir, fmt, subtype)
                row["finishing"] = {**finishing, **trim_record(state.trim, state.waveform_length)}
                row["silent"] = is_silent(waveforms[i])  # the model's output, before any normalisation
                if row["silent"]:
                    log.warning("%s is silent (peak below %g dBFS)", path.name, SILENCE_DBFS)
                row["provenance"] = provenance(cfg_hash)
                if output.spectrogram:
                    row["spectrogram"] = write_spectrogram(out_dir, path, audio, state.sample_rate, row, journal)
            except OSError as exc:
                raise OutputError(f"output.dir: cannot write in {str(out_dir)!r}: {exc.strerror or exc}") from None
            pending.append(row)
            if k + 1 == len(order) or state.prompt_index(order[k + 1]) != p:
                # A prompt's rows go in, in one write, only once all its files exist: a row means its prompt is
                # complete.
                try:
                    append_rows(manifest, pending)
                except OSError as exc:
                    raise OutputError(f"output.dir: cannot write {str(manifest)!r}: {exc.strerror or exc}") from None
                state.records.extend(pending)
                pending = []
        if output.report and not state.item_ids:  # batch runs write it once, at their end
            write_run_report(out_dir)
        return state

    @staticmethod
    def _order(state: GenerationState) -> list[int]:
        """Per prompt, best candidate first (generation order when unranked)."""
        if state.ranks is None:
            return list(range(len(state.waveforms)))
        return sorted(range(len(state.waveforms)), key=lambda i: (state.prompt_index(i), int(state.ranks[i])))

    def _row(self, state: GenerationState, i: int, path: Path, out_dir: Path, fmt: str, subtype: str | None) -> dict:
        p = state.prompt_index(i)
        run = state.run
        return {
            "path": str(path.relative_to(out_dir)),
            "prompt": state.prompts[p],
            "negative_prompt": state.negative_prompts[p] if state.negative_prompts else None,
            "prompt_index": p,
            "seed": state.item_seeds[p] if state.item_seeds else state.seed,
            "candidate": state.candidate_index(i),
            "rank": int(state.ranks[i]) if state.ranks is not None else 1,
            "score": float(state.scores[i]) if state.scores is not None else None,
            "steps": state.steps,
            "scheduler": run.scheduler,
            "guidance_scale": float(state.guidance_scale),
            "audio_length_s": state.waveform_length / state.sample_rate,
            "sample_rate": state.sample_rate,
            "num_samples": int(state.waveforms.shape[1]),
            "format": fmt,
            "subtype": subtype,
            "checkpoint": run.checkpoint,
            "precision": run.precision,
            "stage_times_s": {k: round(v, 6) for k, v in state.timings.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"item_id": state.item_ids[p]} if state.item_ids else {}),
        }
