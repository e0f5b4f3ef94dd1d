"""Long audio in bounded memory: the UNet batch in sub-batches, VAE decoding and vocoding in overlapping time chunks.

Time chunks use overlap-discard: each chunk is decoded with ``overlap`` extra frames of real context on both sides,
and only its core is kept, so chunk edges see the same neighbourhood as in the whole-signal run. The HiFi-GAN vocoder
is purely convolutional, so with an overlap wider than its receptive field the chunked output equals the whole one to
float rounding. The VAE decoder is not exactly local (its GroupNorms and its mid-block attention see the whole
length), so there the overlap bounds, rather than removes, the difference (README: long audio).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def time_chunks(length: int, chunk: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """``(start, end, core_start, core_end)`` windows over ``range(length)``: decode ``[start, end)``, keep
    ``[core_start, core_end)``. Cores tile the range exactly once; windows add up to ``overlap`` on each side."""
    if chunk <= 0 or overlap < 0:
        raise ValueError(f"chunk must be positive and overlap non-negative (got {chunk}, {overlap})")
    for core_start in range(0, length, chunk):
        core_end = min(core_start + chunk, length)
        yield max(0, core_start - overlap), min(length, core_end + overlap), core_start, core_end


def chunked_along_time(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    dim: int,
    out_dim: int,
    scale: int,
    chunk: int | None,
    overlap: int,
) -> torch.Tensor:
    """Apply ``fn`` to windows of ``x`` along ``dim`` and stitch the cores along ``out_dim`` of the outputs.

    ``scale`` is how many output steps one input step becomes (the VAE's up-sampling factor, the vocoder's hop).
    ``chunk=None`` (or a chunk no shorter than the input) is the plain call.
    """
    length = x.shape[dim]
    if chunk is None or chunk >= length:
        return fn(x)
    pieces = []
    for start, end, core_start, core_end in time_chunks(length, chunk, overlap):
        out = fn(x.narrow(dim, start, end - start))
        keep_from = (core_start - start) * scale
        # The last core keeps whatever the model adds past the end (HiFi-GAN emits a few extra samples).
        keep = out.shape[out_dim] - keep_from if core_end == length else (core_end - core_start) * scale
        pieces.append(out.narrow(out_dim, keep_from, keep))
    return torch.cat(pieces, dim=out_dim)


def run_in_sub_batches(fn: Callable[..., torch.Tensor], size: int | None, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` over the leading dimension in sub-batches of ``size`` rows (all at once for ``None``)."""
    rows = tensors[0].shape[0]
    if size is None or size >= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i : i + size] for t in tensors)) for i in range(0, rows, size)])
