"""GPT-2's autoregressive loop over a static, preallocated key/value cache.

The stock loop (and transformers' ``DynamicCache``) grows the cache by concatenation: every generated token has new
shapes, so nothing compiled or captured for one token serves the next. Here the cache holds the prompt and every
generated position from the start (``prompt length + max_new_tokens - 1``), each pass writes its keys and values at
its positions with ``index_copy_``, and attends over the whole cache through a mask that hides padding and the
positions not written yet. Every generated token then runs the same shapes, with the positions as a tensor, so one
compiled graph serves all of them and the whole loop can be captured.

The pass reuses the model's own submodules (layer norms, ``c_attn``, ``c_proj``, the MLP, the position table), so
the weights, offload hooks and dtypes are the model's; only the attention call and the cache are ours. It equals the
stock loop to float rounding (``tests/unit/stages/test_fast_path.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def static_cache_supported(transformer: Any) -> bool:
    """Whether :class:`StaticKVDecoder` reproduces this model: a GPT-2 decoder without cross-attention, whose
    attention is the plain scaled dot product (not the upcast, reordered eager variant)."""
    config = getattr(transformer, "config", None)
    blocks = getattr(transformer, "h", None)
    if config is None or blocks is None or getattr(config, "model_type", None) != "gpt2":
        return False
    if getattr(config, "add_cross_attention", False) or getattr(config, "reorder_and_upcast_attn", False):
        return False
    attn = blocks[0].attn
    return all(hasattr(attn, name) for name in ("c_attn", "c_proj", "num_heads", "head_dim", "scaling"))


class StaticKVDecoder(torch.nn.Module):
    """One pass of a GPT-2 ``transformer`` over new positions, reading and writing a static cache.

    The transformer is held, not registered, so this module has no parameters of its own: moving or casting the
    model moves what this uses.
    """

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "transformer", transformer)

    def new_cache(self, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Zeros for every layer's keys and values: ``(layers, 2, batch, heads, length, head_dim)``."""
        attn = self.transformer.h[0].attn
        shape = (len(self.transformer.h), 2, batch, attn.num_heads, length, attn.head_dim)
        return torch.zeros(shape, device=device, dtype=dtype)

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, cache: torch.Tensor
    ) -> torch.Tensor:
        """``hidden`` (B, q, D) at ``positions`` (q,) in; the last layer's normed hidden states (B, q, D) out.

        ``visible`` (B, 1, q, cache length) says which cached positions each new position attends to; ``cache`` is
        updated in place.
        """
        model = self.transformer
        batch, length, dim = hidden.shape
        h = model.drop(hidden + model.wpe(positions))
        for layer, block in enumerate(model.h):
            attn = block.attn
            residual = h
            q, k, v = attn.c_attn(block.ln_1(h)).split(dim, dim=2)
            q, k, v = (x.view(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2) for x in (q, k, v))
            keys, values = cache[layer, 0], cache[layer, 1]
            keys.index_copy_(2, positions, k)
            values.index_copy_(2, positions, v)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=attn.scaling)
            out = attn.resid_dropout(attn.c_proj(out.transpose(1, 2).reshape(batch, length, dim)))
            h = out + residual
            h = h + block.mlp(block.ln_2(h))
        return model.ln_f(h)


@torch.no_grad()
def generate_static(
    decoder: StaticKVDecoder | Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> torch.Tensor:
    """Append ``max_new_tokens`` last-layer hidden states to ``inputs_embeds`` (B, L, D) with padding
    ``attention_mask`` (B, L); return the new ones (B, max_new_tokens, D). ``decoder`` may be a compiled
    :class:`StaticKVDecoder`.

    No shape changes from one generated token to the next, and nothing is read back to the host.
    """
    batch, prompt, _ = inputs_embeds.shape
    device = inputs_embeds.device
    total = prompt + max_new_tokens - 1
    base = getattr(decoder, "_orig_mod", decoder)
    cache = base.new_cache(batch, total, device, inputs_embeds.dtype)
    padding = attention_mask.to(device=device, dtype=torch.bool)
    keep = torch.cat([padding, padding.new_ones(batch, total - prompt)], dim=1)
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    visible = (causal[None] & keep[:, None, :])[:, None]  # (B, 1, query, key)
    positions = torch.arange(total, device=device)

    hidden = decoder(inputs_embeds, positions[:prompt], visible[:, :, :prompt], cache)
    new = hidden[:, -1:]
    generated = [new]
    for position in range(prompt, total):
        hidden = decoder(new, positions[position : position + 1], visible[:, :, position : position + 1], cache)
        new = hidden[:, -1:]
        generated.append(new)
    return torch.cat(generated, dim=1)
