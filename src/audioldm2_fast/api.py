"""The Python API's types: what a call returns, and keyword settings as Hydra overrides.

``Generator`` (in ``generator``) is the object users build once and call many times::

    from audioldm2_fast import Generator

    with Generator.from_config(checkpoint="tiny", scheduler="ddim", steps=20) as gen:
        result = gen(prompt="rain on a tin roof", seed=3)
        result.waveforms  # (num_prompts * num_waveforms, samples) float32, 16 kHz
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUTPUT_TYPES = ("np", "pt", "latent")
#: Request keys a call may set besides the config's (the stock pipeline's names where it has them).
CALL_KEYS = (
    "latents",
    "prompt_embeds",
    "attention_mask",
    "generated_prompt_embeds",
    "negative_prompt_embeds",
    "negative_attention_mask",
    "negative_generated_prompt_embeds",
    "callback_on_step_end",
    "output_type",
)
_BARE = re.compile(r"^[A-Za-z0-9_./:+-]+$")


@dataclass
class GenerationResult:
    """Waveforms in generation order (prompt-major, then candidate), with ranking and timing.

    ``output_type="np"`` gives numpy arrays, ``"pt"`` torch tensors (on the CPU), ``"latent"`` only ``latents``
    (the denoiser's output; the VAE, vocoder, ranker and writer do not run).
    """

    waveforms: Any  # (num_prompts * num_waveforms, samples) float32, or None for output_type="latent"
    sample_rate: int | None
    prompts: list[str]
    num_waveforms: int
    scores: Any | None
    ranks: Any | None
    records: list[dict[str, Any]] = field(default_factory=list)  # one per written file, best first per prompt
    failed: list[str] = field(default_factory=list)  # one line per item dropped for non-finite values
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # the call's resolved settings (seed, steps, ...)
    latents: Any | None = None  # the denoised latents (always for output_type="latent", else None)

    def candidates(self, prompt_index: int) -> Any:
        """The candidates of one prompt, best first."""
        rows = np.arange(prompt_index * self.num_waveforms, (prompt_index + 1) * self.num_waveforms)
        if self.ranks is not None:
            rows = rows[np.argsort(np.asarray(self.ranks)[rows])]
        return self.waveforms[rows]


def format_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted when they need it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.match(text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            yield from _flatten(f"{prefix}.{key}", sub)
    else:
        yield prefix, value


def overrides_from_keys(keys: Mapping[str, Any], groups: Mapping[str, Any] = ()) -> list[str]:
    """Keyword settings as override strings: ``checkpoint="tiny"`` picks a group option, nested mappings set keys
    (``stages={"vocoder": {"device": "cpu"}}`` is ``stages.vocoder.device=cpu``), other values set a key."""
    overrides = []
    for key, value in keys.items():
        if key in groups and isinstance(value, str):
            overrides.append(f"{key}={value}")
            continue
        for path, leaf in _flatten(key, value):
            overrides.append(f"{path}={format_value(leaf)}")
    return overrides
