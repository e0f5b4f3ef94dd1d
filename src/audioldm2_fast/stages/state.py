"""The state object that travels through the stage chain: each stage reads what it needs and adds what it makes.

The first block of fields is the request (set before any stage runs); the rest are written by the stages, as each
stage class declares in its ``reads`` and ``writes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the command line reads the state's fields without importing torch
    import torch

    from ..outputs.journal import Journal


@dataclass(frozen=True)
class RunInfo:
    """What every output of one Generator records about how it was made (its manifest rows)."""

    checkpoint: str
    precision: str
    scheduler: str
    config_sha256: str
    config_yaml: str


#: A per-step callback: ``fn(step_index, timestep, {"latents": latents}) -> dict | None``. A returned dict's
#: ``latents`` replace the latents (diffusers' ``callback_on_step_end`` convention).
StepCallback = Callable[[int, "torch.Tensor", dict[str, "torch.Tensor"]], "dict[str, torch.Tensor] | None"]


@dataclass
class GenerationState:
    """One generation call. Tensors of the text side are ordered [negatives..., positives...] when guidance is on."""

    # The request.
    prompts: list[str]
    negative_prompts: list[str] | None
    num_waveforms: int
    seed: int
    guidance_scale: float
    steps: int
    eta: float
    audio_length_s: float | None
    max_new_tokens: int | None
    generator: torch.Generator
    trim: bool = True  # cut the audio to exactly audio_length_s (False keeps the latent grid's rounded-up tail)
    run: RunInfo | None = None
    output_dir: Path | None = None  # where the writer puts files
    manifest: str = "manifest.jsonl"  # the writer's manifest file name in output_dir
    initial_latents: torch.Tensor | None = None  # (B * num_waveforms, C, H, W) noise to start from, as diffusers'
    callback: StepCallback | None = None
    t5_length: int | None = None  # pad or cut T5 tokens to this length (precomputed positive embeddings set it)
    # Batch runs (prompts_file): per prompt, its item id and seed, its own generator for its latents and noise, and
    # the journal of its claim, where the writer records each file before it makes it.
    item_ids: list[str] | None = None
    item_seeds: list[int] | None = None
    item_generators: list[torch.Generator] | None = None
    # Server batches (task=serve): per prompt, its guidance scale (None: guidance_scale for all).
    item_guidance_scales: list[float] | None = None
    output_format: str | None = None  # the writer's format for this call (None: output.format)
    item_journals: list[Journal] | None = None

    # text_encoders
    clap_embeds: torch.Tensor | None = None  # (P, 1, clap_dim) pooled CLAP text embedding
    clap_mask: torch.Tensor | None = None  # (P, 1)
    t5_embeds: torch.Tensor | None = None  # (P, L, t5_dim) Flan-T5 last hidden state
    t5_mask: torch.Tensor | None = None  # (P, L)
    # prior
    generated_embeds: torch.Tensor | None = None  # (P, max_new_tokens, gpt2_dim)
    # denoiser
    latents: torch.Tensor | None = None  # (B * num_waveforms, C, H, W)
    waveform_length: int | None = None  # samples kept after the vocoder
    # vae_decoder
    mel: torch.Tensor | None = None  # (B * num_waveforms, 1, frames, mel_bins)
    # vocoder
    waveforms: torch.Tensor | None = None  # (B * num_waveforms, samples), float32 on the CPU
    sample_rate: int | None = None
    # ranker
    scores: torch.Tensor | None = None  # (B * num_waveforms,) CLAP cosine similarity to the own prompt
    ranks: torch.Tensor | None = None  # (B * num_waveforms,) 1 = best candidate of its prompt
    # writer
    records: list[dict[str, Any]] = field(default_factory=list)
    # any stage: items (waveform indices) dropped because of non-finite values, with the reason (see finite.py)
    failed: dict[int, str] = field(default_factory=dict)

    timings: dict[str, float] = field(default_factory=dict)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def prompt_index(self, waveform_index: int) -> int:
        return waveform_index // self.num_waveforms

    def candidate_index(self, waveform_index: int) -> int:
        return waveform_index % self.num_waveforms


_FIELDS = [f.name for f in dataclasses.fields(GenerationState)]
#: Fields set by the request before any stage runs; every other field is some stage's to write.
REQUEST_FIELDS = tuple(_FIELDS[: _FIELDS.index("clap_embeds")])
