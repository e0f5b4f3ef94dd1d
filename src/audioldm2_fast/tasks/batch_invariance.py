"""Kernels whose result for one row does not depend on the other rows of its batch, on the CPU.

A server batches requests, and a request's audio should not change with its batch-mates. On the CPU three kernel
choices make a row's float result depend on the batch size: MKL's GEMM picks other code paths for small row counts
(``nn.Linear``, every attention projection), oneDNN picks another convolution kernel for a batch of one, and
PyTorch's channels-last GroupNorm splits its reduction by batch size and thread count (the VAE decoder's mid block).
The server avoids each one:

- MKL's conditional numerical reproducibility, ``MKL_CBWR=AUTO,STRICT`` (set before MKL's first call, unless the
  user set ``MKL_CBWR``): the same code path for every row count, on the best instruction set the CPU has;
- PyTorch's native convolutions instead of oneDNN's while the batched stages run (``batch_invariant_kernels``);
- the VAE decoder, the vocoder and the ranker run one request at a time (the server's split of the chain).

``check()`` measures, in this process, whether the first two hold; the server reports the answer at ``/health``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

MKL_SETTING = "AUTO,STRICT"


def prefer_reproducible_blas() -> None:
    """Ask MKL for row-count-independent GEMMs. MKL reads this once, at its first call: do it before any GEMM."""
    os.environ.setdefault("MKL_CBWR", MKL_SETTING)


@contextlib.contextmanager
def batch_invariant_kernels(device_type: str) -> Iterator[None]:
    """Native convolutions instead of oneDNN's on the CPU (a no-op elsewhere)."""
    if device_type != "cpu":
        yield
        return
    import torch

    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def check() -> bool:
    """Whether a linear layer and a convolution give each row the same bits at batch sizes 1, 3 and 8 here."""
    import torch

    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(96, 80)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(8, 96, generator=generator)
    images = torch.randn(8, 8, 12, 10, generator=generator)
    with torch.no_grad(), batch_invariant_kernels("cpu"):
        full, full_conv = linear(x), conv(images)
        return all(
            torch.equal(linear(x[:n]), full[:n]) and torch.equal(conv(images[:n]), full_conv[:n]) for n in (1, 3)
        )
