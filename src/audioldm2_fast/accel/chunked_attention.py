"""UNet attention with the queries in chunks (``memory.attention_chunk_size``): bounded attention scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ChunkedAttnProcessor:
    """SDPA attention with the queries in chunks of ``chunk_size``: peak memory of the attention scores falls from
    O(queries x keys) to O(chunk_size x keys) for kernels that materialise them (math, and CPU), with the same result
    (each query's softmax is over all keys in every chunk). Drop-in for diffusers' ``AttnProcessor2_0``."""

    def __init__(self, chunk_size: int):
        self.chunk_size = int(chunk_size)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        outputs = []
        for i in range(0, query.shape[2], self.chunk_size):
            mask = None
            if attention_mask is not None:
                mask = attention_mask if attention_mask.shape[2] == 1 else attention_mask[:, :, i : i + self.chunk_size]
            outputs.append(
                F.scaled_dot_product_attention(
                    query[:, :, i : i + self.chunk_size], key, value, attn_mask=mask, dropout_p=0.0, is_causal=False
                )
            )
        hidden_states = torch.cat(outputs, dim=2)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
