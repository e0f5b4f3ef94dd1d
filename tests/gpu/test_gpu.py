"""Options that only run on a CUDA GPU, each checked against the plain run on the same GPU. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

CUDA = ["device=cuda", "prompt=rain on a tin roof", "negative_prompt=noise"]


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_offload_modes_match_no_offload(mode, make_generator):
    ref = make_generator(*CUDA).generate().waveforms
    out = make_generator(*CUDA, f"offload={mode}").generate().waveforms
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn", "math"])
def test_cuda_attention_kernels_match_sdpa_in_half_precision(backend, make_generator):
    ref = make_generator(*CUDA, "precision=bf16").generate().waveforms
    out = make_generator(*CUDA, "precision=bf16", f"attention={backend}").generate().waveforms
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() < 5e-2  # bf16 kernels differ in rounding, not in result


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs"])
def test_compiled_denoiser_matches_eager_on_cuda(mode, make_generator):
    ref = make_generator(*CUDA).generate().waveforms
    gen = make_generator(*CUDA, f"compile={mode}")
    gen.generate()  # warm-up: compile and record
    np.testing.assert_allclose(gen.generate().waveforms, ref, rtol=0, atol=1e-4)


def test_seed_recipe_runs(make_generator):
    gen = make_generator(*CUDA, "precision=fp16", "compile=reduce-overhead", "scheduler=dpmpp_2m", "offload=model")
    assert np.isfinite(gen.generate().waveforms).all()
