"""The ``attention`` group: an SDPA kernel choice per stage, or a different attention processor on the UNet.

The AudioLDM 2 UNet's processors call ``F.scaled_dot_product_attention`` directly (``set_attention_backend`` has no
effect on it), so kernels are chosen with ``torch.nn.attention.sdpa_kernel`` around the stages listed in
``attention.stages``. Text encoders use SDPA wherever transformers implements it for them, and the same context
applies to them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from ..stages.base import Stage


def _backends(name: str) -> list[SDPBackend] | None:
    # Flash and cuDNN cannot take the UNet's T5 attention mask on CUDA; masked calls fall back to the
    # memory-efficient kernel, which can.
    table = {
        "math": ["MATH"],
        "flash": ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
        "efficient": ["EFFICIENT_ATTENTION"],
        "cudnn": ["CUDNN_ATTENTION", "EFFICIENT_ATTENTION"],
    }
    if name not in table:
        return None
    return [getattr(SDPBackend, b) for b in table[name] if hasattr(SDPBackend, b)]


def attention_context(cfg: DictConfig, stage_name: str) -> contextlib.AbstractContextManager:
    """The SDPA kernel restriction for one stage's call (a no-op for sdpa, sliced, xformers and unlisted stages)."""
    acfg = cfg.attention
    backends = _backends(acfg.backend)
    if backends is None or stage_name not in (acfg.get("stages") or []):
        return contextlib.nullcontext()
    return sdpa_kernel(backends)


def apply_attention_processors(stage: Stage, cfg: DictConfig) -> None:
    """Swap the UNet's attention processors for ``sliced`` and ``xformers``."""
    acfg = cfg.attention
    unet = stage.modules.get("unet")
    if unet is None:
        return
    chunk = (cfg.get("memory") or {}).get("attention_chunk_size")
    if chunk is not None:  # checked against sliced/xformers in compat.rule_memory
        from .chunking import ChunkedAttnProcessor

        unet.set_attn_processor(ChunkedAttnProcessor(chunk))
    if stage.name not in (acfg.get("stages") or []):
        return
    if acfg.backend == "sliced":
        unet.set_attention_slice(acfg.get("slice_size", "auto"))
    elif acfg.backend == "xformers":
        unet.enable_xformers_memory_efficient_attention()
