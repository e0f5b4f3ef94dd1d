"""Write one audio file per waveform and one ``manifest.jsonl`` row per file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..audio_io import EXTENSIONS, append_jsonl, prompt_slug, reserve_path, write_audio
from ..errors import OutputError, StageError
from ..items import manifest_name
from ..state import GenerationState
from .base import Stage
from .registry import register_stage


@register_stage("writer")
class Writer(Stage):
    def output_dir(self) -> Path:
        out = self.cfg.output.get("dir")
        if not out:
            raise OutputError("output.dir: not set (the command line sets it to the Hydra run dir)")
        path = Path(str(out)).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output.dir: cannot create {str(path)!r}: {exc.strerror or exc}") from None
        return path

    def __call__(self, state: GenerationState) -> GenerationState:
        out_dir = self.output_dir()
        fmt = self.cfg.output.format
        subtype = self.cfg.output.get("subtype")
        waveforms = state.waveforms.numpy()
        bad = [i for i, w in enumerate(waveforms) if not np.isfinite(w).all()]
        if bad:
            raise StageError(self.name, f"waveform(s) {bad} contain NaN or Inf; nothing was written for them")
        order = self._order(state)
        manifest = out_dir / manifest_name(self.cfg)
        pending: list[dict] = []
        for k, i in enumerate(order):
            p = state.prompt_index(i)
            if state.item_ids:  # batch runs: names that resume can find again
                stem = f"{state.item_ids[p]}_c{state.candidate_index(i)}"
            else:
                slug = prompt_slug(state.prompts[p], self.cfg.output.name_max_length)
                stem = f"{slug}_s{state.seed}_c{state.candidate_index(i)}"
            try:
                path = reserve_path(out_dir, stem, EXTENSIONS[fmt])
                write_audio(path, waveforms[i], state.sample_rate, fmt, subtype)
            except OSError as exc:
                raise OutputError(f"output.dir: cannot write in {str(out_dir)!r}: {exc.strerror or exc}") from None
            pending.append(self._row(state, i, path, out_dir))
            if k + 1 == len(order) or state.prompt_index(order[k + 1]) != p:
                # A prompt's rows go in only once all its files exist: a row means its prompt is complete.
                for row in pending:
                    append_jsonl(manifest, row)
                state.records.extend(pending)
                pending = []
        return state

    @staticmethod
    def _order(state: GenerationState) -> list[int]:
        """Per prompt, best candidate first (generation order when unranked)."""
        if state.ranks is None:
            return list(range(len(state.waveforms)))
        return sorted(range(len(state.waveforms)), key=lambda i: (state.prompt_index(i), int(state.ranks[i])))

    def _row(self, state: GenerationState, i: int, path: Path, out_dir: Path) -> dict:
        p = state.prompt_index(i)
        cfg = self.cfg
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
            "scheduler": cfg.scheduler.name,
            "guidance_scale": float(state.guidance_scale),
            "audio_length_s": state.waveform_length / state.sample_rate,
            "sample_rate": state.sample_rate,
            "num_samples": int(state.waveforms.shape[1]),
            "format": cfg.output.format,
            "subtype": cfg.output.get("subtype"),
            "checkpoint": cfg.checkpoint.get("repo_id") or cfg.checkpoint.get("path") or cfg.checkpoint.name,
            "precision": cfg.precision.name,
            "stage_times_s": {k: round(v, 6) for k, v in state.timings.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"item_id": state.item_ids[p]} if state.item_ids else {}),
        }
