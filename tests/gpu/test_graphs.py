"""The fast path on a CUDA GPU: captured graphs against the plain run, replays, and a loop with no host sync.

Skipped without CUDA; ``make device-check`` runs them on the GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioldm2_fast.accel.graphs import GraphedMethod

pytestmark = pytest.mark.gpu

CUDA = ["device=cuda", "audio_length_s=1.28"]
REQUEST = dict(prompt="rain on a tin roof", negative_prompt="low quality", seed=3)


def _graphed(gen) -> list[GraphedMethod]:
    return [getattr(s, n) for s in gen.stages for n in s.graphed if isinstance(getattr(s, n), GraphedMethod)]


def test_captured_stages_match_the_plain_run_and_replay(make_generator):
    plain = make_generator(*CUDA, "prompt=x").generate(**REQUEST).waveforms
    gen = make_generator(*CUDA, "prompt=x", "graphs=cuda")
    methods = _graphed(gen)
    assert {m.label for m in methods} >= {"text_encoders.encode", "prior.generate", "denoiser.denoise"}
    first = gen.generate(**REQUEST).waveforms
    again = gen.generate(**REQUEST).waveforms
    other = gen.generate(**{**REQUEST, "seed": 4}).waveforms
    assert all(m.captures == 1 and not m.uncaptured for m in methods), [(m.label, m.uncaptured) for m in methods]
    assert all(m.replays == 3 for m in methods)
    np.testing.assert_allclose(first, plain, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(again, first)
    assert np.abs(other - first).max() > 0  # a replay runs on its new inputs


def test_a_new_shape_is_captured_once_more(make_generator):
    gen = make_generator(*CUDA, "prompt=x", "graphs=cuda")
    gen.generate(**REQUEST)
    gen.generate(**{**REQUEST, "audio_length_s": 2.56})
    gen.generate(**{**REQUEST, "steps": 3})
    denoise = next(m for m in _graphed(gen) if m.label == "denoiser.denoise")
    assert denoise.captures == 3 and len(denoise.entries) == 3


def test_graphs_over_inductor_match_the_plain_run(make_generator):
    plain = make_generator(*CUDA, "prompt=x").generate(**REQUEST).waveforms
    gen = make_generator(*CUDA, "prompt=x", "graphs=cuda-inductor")
    gen.generate(**REQUEST)
    np.testing.assert_allclose(gen.generate(**REQUEST).waveforms, plain, rtol=0, atol=1e-4)


def test_the_denoising_loop_never_syncs_with_the_host(make_generator):
    gen = make_generator(*CUDA, "prompt=x")
    denoiser = next(s for s in gen.stages if s.name == "denoiser")
    state = gen.new_state(**REQUEST)
    for stage in gen.stages[:2]:
        state = stage(state)
    real = denoiser.denoise

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    denoiser.denoise = strict
    denoiser(state)  # raises if any op in the loop synchronises with the host
    assert state.latents is not None and torch.isfinite(state.latents).all()


def test_fastest_runs_in_half_precision(make_generator):
    gen = make_generator(*CUDA, "prompt=x", "experiment=fastest", "steps=4")
    first = gen.generate(**REQUEST).waveforms
    second = gen.generate(**REQUEST).waveforms
    assert np.isfinite(second).all() and np.abs(second).max() > 0
    np.testing.assert_array_equal(first, second)
