"""Rank the candidates of each prompt by CLAP text-audio similarity.

Unlike the stock pipeline, which ranks across the whole batch and can hand one prompt another prompt's audio
(diffusers #13602), each prompt's candidates are scored against that prompt only. Every candidate is kept.

Audio is resampled to the CLAP feature extractor's rate; audio longer than its window is cut into consecutive
windows whose embeddings are averaged, so the score is deterministic (CLAP's own ``rand_trunc`` picks a random
window).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Stage
from .state import GenerationState


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling along the last axis."""
    if orig_sr == target_sr:
        return audio
    from scipy.signal import resample_poly  # scipy's signal module only when candidates are ranked

    g = math.gcd(orig_sr, target_sr)
    return resample_poly(audio, target_sr // g, orig_sr // g, axis=-1).astype(np.float32)


class Ranker(Stage):
    components = ("text_encoder", "tokenizer", "feature_extractor")
    reads = ("waveforms", "sample_rate", "prompts")
    writes = ("scores", "ranks")

    def setup(self) -> None:
        # CLAP is shared with text_encoders; load it only when candidates will actually be ranked.
        self._ready = False

    def _ensure_loaded(self) -> None:
        if not self._ready:
            super().setup()
            self._ready = True

    @torch.no_grad()
    def audio_embeddings(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        extractor = self.modules["feature_extractor"]
        audio = resample(waveforms.numpy(), sample_rate, extractor.sampling_rate)
        window = int(extractor.nb_max_samples)
        pieces, owner = [], []
        for i, wav in enumerate(audio):
            for start in range(0, max(len(wav), 1), window):
                pieces.append(wav[start : start + window])
                owner.append(i)
        features = extractor(pieces, sampling_rate=extractor.sampling_rate, return_tensors="pt")
        clap = self.modules["text_encoder"]
        out = clap.get_audio_features(
            input_features=self.to_stage(features["input_features"]),
            is_longer=self.to_stage(features.get("is_longer")),
        )
        embeds = F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)
        owner_t = torch.tensor(owner, device=embeds.device)
        pooled = torch.zeros(len(audio), embeds.shape[-1], device=embeds.device).index_add_(0, owner_t, embeds)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.modules["tokenizer"](prompts, padding=True, truncation=True, return_tensors="pt")
        out = self.modules["text_encoder"].get_text_features(
            self.to_stage(tokens["input_ids"]), attention_mask=self.to_stage(tokens["attention_mask"])
        )
        return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)

    def __call__(self, state: GenerationState) -> GenerationState:
        n = state.num_waveforms
        if n <= 1 or state.waveforms is None:
            return state
        self._ensure_loaded()
        self.place()  # CLAP may have been offloaded after text_encoders; a no-op for hook-managed modules
        audio = self.audio_embeddings(state.waveforms, state.sample_rate).view(state.batch_size, n, -1)
        text = self.text_embeddings(state.prompts)
        scores = torch.einsum("bnd,bd->bn", audio, text)  # each prompt against its own candidates only
        if state.failed:  # dropped items rank last, so the written candidates keep ranks 1..k
            scores.view(-1)[list(state.failed)] = -torch.inf
        order = torch.argsort(scores, dim=1, descending=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(1, n + 1, device=order.device).expand_as(order))
        state.scores = scores.reshape(-1).cpu()
        state.ranks = ranks.reshape(-1).cpu()
        return state
