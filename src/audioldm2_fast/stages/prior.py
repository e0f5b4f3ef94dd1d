"""Projection of both text embeddings and the GPT-2 prior that generates ``max_new_tokens`` hidden states.

The loop works with ``GPT2Model`` (as the published checkpoints ship it) and ``GPT2LMHeadModel`` alike: only the
base transformer's last hidden state is used, which is what the stock pipeline takes from ``hidden_states[-1]``. The
stock loop calls generation helpers that ``GPT2Model`` lacks under transformers 5, and so fails on the published
checkpoints. The loop runs over a static, preallocated key/value cache (:mod:`.kv_cache`); a language model that the
static pass does not reproduce (cross-attention, upcast attention) keeps transformers' own cache
(:func:`generate_hidden_states`).

The projection and the loop are :meth:`Prior.generate`, a function of tensors only, which the ``graphs``
optimisation may capture.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..runtime.errors import ConfigError
from .base import Stage
from .kv_cache import StaticKVDecoder, generate_static, static_cache_supported
from .state import GenerationState

#: GPT-2's input besides T5's tokens: CLAP's one pooled embedding, and a start and an end token around each of the two.
PROJECTION_EXTRA_TOKENS = 5


def positions_needed(t5_tokens: int, max_new_tokens: int) -> int:
    """GPT-2 positions one call uses: its input sequence, then one per generated state but the last."""
    return t5_tokens + PROJECTION_EXTRA_TOKENS + max_new_tokens - 1


def check_positions(
    language_model_config: dict[str, Any], t5_tokens: int, max_new_tokens: int, where: str = ""
) -> None:
    """Refuse a ``max_new_tokens`` that, with prompts of ``t5_tokens`` T5 tokens, runs past GPT-2's positions."""
    limit = language_model_config.get("n_positions") or language_model_config.get("max_position_embeddings")
    needed = positions_needed(t5_tokens, max_new_tokens)
    if limit is None or needed <= int(limit):
        return
    most = int(limit) - positions_needed(t5_tokens, 1) + 1
    raise ConfigError(
        "max_new_tokens",
        f"{where}{max_new_tokens} with prompts of {t5_tokens} T5 tokens needs {needed} GPT-2 positions; this "
        f"checkpoint's language model has {limit}"
        + (f" (use at most {most})" if most >= 1 else " (shorten the prompt)"),
    )


def _cache_kwarg(model: torch.nn.Module) -> str:
    params = inspect.signature(getattr(model, "_orig_mod", model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def generate_hidden_states(
    language_model: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> torch.Tensor:
    """Autoregressively append ``max_new_tokens`` last-layer hidden states to ``inputs_embeds``; return the new ones.

    transformers' own cache, grown by one position per token: the path for models the static cache does not
    reproduce, and the reference the static loop is tested against."""
    transformer = getattr(language_model, "transformer", language_model)  # GPT2LMHeadModel wraps a GPT2Model
    cache_kwarg = _cache_kwarg(transformer)
    out = transformer(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=True)
    new = out.last_hidden_state[:, -1:, :]
    generated = [new]
    for _ in range(max_new_tokens - 1):
        cache = out.get("cache", None) or out.get("past_key_values", None)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        out = transformer(inputs_embeds=new, attention_mask=attention_mask, use_cache=True, **{cache_kwarg: cache})
        new = out.last_hidden_state[:, -1:, :]
        generated.append(new)
    return torch.cat(generated, dim=1)


class Prior(Stage):
    components = ("projection_model", "language_model")
    reads = ("clap_embeds", "clap_mask", "t5_embeds", "t5_mask")
    writes = ("generated_embeds",)
    graphed = ("generate",)

    def setup(self) -> None:
        super().setup()
        lm = self.modules["language_model"]
        transformer = getattr(lm, "transformer", lm)
        #: The static-cache pass over the language model (None: transformers' own loop); ``compile`` may wrap it.
        self.decoder: Any = StaticKVDecoder(transformer) if static_cache_supported(transformer) else None

    def compile_targets(self):
        if getattr(self, "decoder", None) is not None:
            return [(self, "decoder")]
        lm = self.modules["language_model"]
        return [(lm, "transformer")] if hasattr(lm, "transformer") else [(self.modules, "language_model")]

    def max_new_tokens(self, state: GenerationState) -> int:
        if state.max_new_tokens is not None:
            return int(state.max_new_tokens)
        return int(getattr(self.modules["language_model"].config, "max_new_tokens", None) or 8)

    @torch.no_grad()
    def generate(
        self,
        clap_embeds: torch.Tensor,
        clap_mask: torch.Tensor,
        t5_embeds: torch.Tensor,
        t5_mask: torch.Tensor,
        *,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Both text embeddings and their masks in, GPT-2's ``max_new_tokens`` generated states out: tensors only."""
        projected = self.modules["projection_model"](
            hidden_states=clap_embeds,
            hidden_states_1=t5_embeds,
            attention_mask=clap_mask,
            attention_mask_1=t5_mask,
        )
        if getattr(self, "decoder", None) is not None:
            return generate_static(self.decoder, projected.hidden_states, projected.attention_mask, max_new_tokens)
        return generate_hidden_states(
            self.modules["language_model"], projected.hidden_states, projected.attention_mask, max_new_tokens
        )

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        config = self.modules["language_model"].config
        new_tokens = self.max_new_tokens(state)
        check_positions(config.to_dict(), int(state.t5_embeds.shape[1]), new_tokens)
        state.generated_embeds = self.generate(
            self.to_stage(state.clap_embeds),
            self.to_stage(state.clap_mask),
            self.to_stage(state.t5_embeds),
            self.to_stage(state.t5_mask),
            max_new_tokens=new_tokens,
        )
        return state
