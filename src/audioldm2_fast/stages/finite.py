"""Non-finite values between stages: find the items they reach, drop those items, and let the others go on.

After each stage, every floating tensor the stage put on the state gets one ``isfinite().all()``. Only when that
fails are the offending rows found and mapped to items (one item = one waveform: a prompt's candidate). Text-side
tensors hold a row per prompt (and, with guidance, one per negative prompt), so a bad row there fails every
candidate of its prompt. The bad rows are zeroed, so that nothing downstream mixes them into the good items, and the
items are recorded in ``state.failed`` with a message that names the stage; the writer skips them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .state import GenerationState

#: A waveform whose peak is below this level is flagged ``silent`` in the manifest (it is still written).
SILENCE_DBFS = -60.0

#: Tensors with one row per prompt, ordered [negatives..., positives...] when guidance is on.
TEXT_FIELDS = {"clap_embeds", "t5_embeds", "generated_embeds"}


def tensor_fields(state: GenerationState) -> dict[str, int]:
    """Identity of every tensor on the state, to tell which ones a stage has just made."""
    out = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            out[f.name] = id(value)
    return out


def failure_message(stage: str) -> str:
    return f"stage {stage}: non-finite values (NaN or Inf) in its output; try stages.{stage}.dtype=fp32"


def _items_of_rows(state: GenerationState, field: str, rows: list[int], num_rows: int) -> set[int]:
    prompts, per_prompt = state.batch_size, state.num_waveforms
    total = prompts * per_prompt
    if field not in TEXT_FIELDS and num_rows == total:
        return set(rows)
    if num_rows in (prompts, 2 * prompts):
        return {r % prompts * per_prompt + c for r in rows for c in range(per_prompt)}
    return set(range(total))  # rows that map to no item: every item is affected


def check_stage_output(state: GenerationState, stage: str, before: dict[str, int]) -> list[int]:
    """Record in ``state.failed`` the items that a non-finite output of ``stage`` reaches; return the new ones."""
    new: list[int] = []
    for name, ident in tensor_fields(state).items():
        tensor = getattr(state, name)
        if ident == before.get(name) or not tensor.is_floating_point() or tensor.ndim == 0:
            continue
        if bool(torch.isfinite(tensor).all()):
            continue
        bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
        rows = bad.nonzero().flatten().tolist()
        with torch.no_grad():
            tensor[bad] = 0
        for item in sorted(_items_of_rows(state, name, rows, tensor.shape[0])):
            if item not in state.failed:
                state.failed[item] = failure_message(stage)
                new.append(item)
    return new


def describe(state: GenerationState, item: int) -> str:
    """One line naming the failed item and why."""
    prompt = state.prompts[state.prompt_index(item)]
    shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
    return (
        f"prompt {state.prompt_index(item)} ({shown!r}) candidate {state.candidate_index(item)}: "
        f"{state.failed[item]}; nothing was written for it"
    )


def is_silent(waveform: np.ndarray) -> bool:
    """Peak below ``SILENCE_DBFS`` (full scale = 1.0)."""
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    return peak < 10 ** (SILENCE_DBFS / 20)
