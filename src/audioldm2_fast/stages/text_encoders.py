"""CLAP text branch (pooled, projected) and Flan-T5 encoder, for the prompts and, with guidance, the negatives.

Tokenisation follows the stock ``AudioLDM2Pipeline`` exactly: CLAP pads to the tokenizer's ``model_max_length``;
T5 pads the prompts to the longest one, and pads or truncates the negative prompts to that same length. Positive and
negative prompts then run through each encoder in one batch.
"""

from __future__ import annotations

import logging

import torch

from .base import Stage
from .state import GenerationState

log = logging.getLogger(__name__)


class TextEncoders(Stage):
    components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")
    reads = ("prompts",)
    writes = ("clap_embeds", "clap_mask", "t5_embeds", "t5_mask")

    def compile_targets(self):
        return [(self.modules["text_encoder"], "text_model"), (self.modules, "text_encoder_2")]

    def _tokenize(self, state: GenerationState) -> tuple[dict, dict]:
        clap_tok, t5_tok = self.modules["tokenizer"], self.modules["tokenizer_2"]
        prompts = state.prompts
        clap = clap_tok(
            prompts, padding="max_length", max_length=clap_tok.model_max_length, truncation=True, return_tensors="pt"
        )
        if state.t5_length is None:
            t5 = t5_tok(prompts, padding=True, max_length=t5_tok.model_max_length, truncation=True, return_tensors="pt")
        else:  # to match precomputed embeddings of this length, as the stock pipeline pads its negatives to them
            t5 = t5_tok(prompts, padding="max_length", max_length=state.t5_length, truncation=True, return_tensors="pt")
        self._warn_truncation(t5_tok, prompts, t5.input_ids)
        if state.do_classifier_free_guidance:
            negatives = state.negative_prompts or [""] * len(prompts)
            clap_neg = clap_tok(
                negatives,
                padding="max_length",
                max_length=clap_tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            t5_neg = t5_tok(
                negatives, padding="max_length", max_length=t5.input_ids.shape[1], truncation=True, return_tensors="pt"
            )
            clap = {k: torch.cat([clap_neg[k], clap[k]]) for k in ("input_ids", "attention_mask")}
            t5 = {k: torch.cat([t5_neg[k], t5[k]]) for k in ("input_ids", "attention_mask")}
        return dict(clap), dict(t5)

    @staticmethod
    def _warn_truncation(tokenizer, prompts: list[str], ids: torch.Tensor) -> None:
        full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            log.warning("prompt truncated to the T5 limit of %d tokens", tokenizer.model_max_length)

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        clap_inputs, t5_inputs = self._tokenize(state)
        clap_ids = self.to_stage(clap_inputs["input_ids"])
        clap_mask = self.to_stage(clap_inputs["attention_mask"])
        features = self.modules["text_encoder"].get_text_features(clap_ids, attention_mask=clap_mask)
        features = getattr(features, "pooler_output", features)  # transformers 5 returns a model output
        state.clap_embeds = features[:, None, :]
        state.clap_mask = clap_mask.new_ones((features.shape[0], 1))

        t5_ids = self.to_stage(t5_inputs["input_ids"])
        state.t5_mask = self.to_stage(t5_inputs["attention_mask"])
        state.t5_embeds = self.modules["text_encoder_2"](t5_ids, attention_mask=state.t5_mask)[0]
        return state
