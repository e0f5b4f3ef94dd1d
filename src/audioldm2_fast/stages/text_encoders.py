"""CLAP text branch (pooled, projected) and Flan-T5 encoder, for the prompts and, with guidance, the negatives.

T5 is tokenised as the stock ``AudioLDM2Pipeline`` does it: the prompts padded to the longest one, the negative
prompts padded or cut to that same length. The stock pipeline pads CLAP to the tokenizer's ``model_max_length`` (512),
but only the pooled output of CLAP's first token is used, and with the attention mask padding changes nothing but the
cost: so by default (``clap_padding: longest``) CLAP runs at the batch's longest prompt, rounded up to a multiple of
``clap_pad_multiple`` tokens so that nearby lengths share one shape (compiled or captured graphs). The pooled
embeddings equal the padded ones to float rounding (``tests/unit/stages/test_fast_path.py``);
``clap_padding: max_length`` is the stock behaviour. Positive and negative prompts run through each encoder in one
batch.

The encoders' tensor work is :meth:`TextEncoders.encode`, a function of tensors only, which the ``graphs``
optimisation may capture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config.fields import setting
from .base import Stage, StageSettings
from .state import GenerationState

log = logging.getLogger(__name__)


CLAP_PADDING = ("longest", "max_length")


@dataclass(frozen=True, kw_only=True)
class TextEncoderSettings(StageSettings):
    clap_padding: str = setting("longest", choices=CLAP_PADDING)
    clap_pad_multiple: int = setting(8, ge=1)


class TextEncoders(Stage):
    components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")
    reads = ("prompts",)
    writes = ("clap_embeds", "clap_mask", "t5_embeds", "t5_mask")
    Settings = TextEncoderSettings
    graphed = ("encode",)

    def compile_targets(self):
        return [(self.modules["text_encoder"], "text_model"), (self.modules, "text_encoder_2")]

    def _tokenize(self, state: GenerationState) -> tuple[dict, dict]:
        clap_tok, t5_tok = self.modules["tokenizer"], self.modules["tokenizer_2"]
        prompts = state.prompts
        negatives = (state.negative_prompts or [""] * len(prompts)) if state.do_classifier_free_guidance else []
        clap = self._clap_tokens(clap_tok, [*negatives, *prompts])
        if state.t5_length is None:
            t5 = t5_tok(prompts, padding=True, max_length=t5_tok.model_max_length, truncation=True, return_tensors="pt")
        else:  # to match precomputed embeddings of this length, as the stock pipeline pads its negatives to them
            t5 = t5_tok(prompts, padding="max_length", max_length=state.t5_length, truncation=True, return_tensors="pt")
        self._warn_truncation(t5_tok, prompts, t5.input_ids)
        if negatives:
            t5_neg = t5_tok(
                negatives, padding="max_length", max_length=t5.input_ids.shape[1], truncation=True, return_tensors="pt"
            )
            t5 = {k: torch.cat([t5_neg[k], t5[k]]) for k in ("input_ids", "attention_mask")}
        return clap, dict(t5)

    def clap_length(self, texts: list[str]) -> int:
        """The token length CLAP runs ``texts`` at (a batch runs at the longest of its prompts' lengths)."""
        tokenizer = self.modules["tokenizer"]
        limit = tokenizer.model_max_length
        if getattr(self.settings, "clap_padding", "max_length") == "max_length":
            return int(limit)
        multiple = int(getattr(self.settings, "clap_pad_multiple", 1))
        longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit).input_ids)
        return int(min(limit, -(-longest // multiple) * multiple))

    def _clap_tokens(self, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
        """CLAP's tokens for ``texts`` (negatives first), padded as ``clap_padding`` says."""
        length = self.clap_length(texts)
        tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return {k: tokens[k] for k in ("input_ids", "attention_mask")}

    @staticmethod
    def _warn_truncation(tokenizer, prompts: list[str], ids: torch.Tensor) -> None:
        full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            log.warning("prompt truncated to the T5 limit of %d tokens", tokenizer.model_max_length)

    @torch.no_grad()
    def encode(
        self, clap_ids: torch.Tensor, clap_mask: torch.Tensor, t5_ids: torch.Tensor, t5_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and masks in, (pooled CLAP embeddings, T5 last hidden states) out: tensors only."""
        features = self.modules["text_encoder"].get_text_features(clap_ids, attention_mask=clap_mask)
        features = getattr(features, "pooler_output", features)  # transformers 5 returns a model output
        t5_embeds = self.modules["text_encoder_2"](t5_ids, attention_mask=t5_mask)[0]
        return features, t5_embeds

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        clap_inputs, t5_inputs = self._tokenize(state)
        clap_ids = self.to_stage(clap_inputs["input_ids"])
        clap_mask = self.to_stage(clap_inputs["attention_mask"])
        t5_ids = self.to_stage(t5_inputs["input_ids"])
        state.t5_mask = self.to_stage(t5_inputs["attention_mask"])
        features, state.t5_embeds = self.encode(clap_ids, clap_mask, t5_ids, state.t5_mask)
        state.clap_embeds = features[:, None, :]
        state.clap_mask = clap_mask.new_ones((features.shape[0], 1))
        return state
