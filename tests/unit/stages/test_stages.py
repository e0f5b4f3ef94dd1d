"""The stage registry, replacing stages from config, and per-stage device and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioldm2_fast.runtime.errors import ConfigError
from audioldm2_fast.stages import STAGES, Stage, register_stage, resolve_stage_class

BUILTIN = ["text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "ranker", "writer"]


def test_builtin_stages_are_registered_by_name():
    for name in BUILTIN:
        assert issubclass(resolve_stage_class(name), Stage)
    assert set(BUILTIN) <= set(STAGES)


def test_register_stage_refuses_a_second_class_under_one_name():
    with pytest.raises(ValueError, match="already registered"):
        register_stage("vocoder")(type("Other", (Stage,), {}))


def test_resolve_stage_class_errors_name_the_key():
    with pytest.raises(ConfigError, match="stages.x.impl"):
        resolve_stage_class("nope", key="stages.x.impl")
    with pytest.raises(ConfigError, match="not a subclass"):
        resolve_stage_class("collections:OrderedDict")


def test_chain_follows_config_order(make_generator):
    gen = make_generator("prompt=x")
    assert [s.name for s in gen.stages] == BUILTIN


def test_stage_replaced_from_config_without_code_edits(make_generator):
    base = make_generator("prompt=x").generate().waveforms
    custom = make_generator("prompt=x", "stages.vocoder.impl=custom_stages:HalfVolumeVocoder")
    assert type(custom.stages[BUILTIN.index("vocoder")]).__name__ == "HalfVolumeVocoder"
    np.testing.assert_allclose(custom.generate().waveforms, base * 0.5, rtol=0, atol=1e-7)


def test_each_stage_has_its_own_device_and_dtype(make_generator):
    gen = make_generator("prompt=x", "stages.vocoder.device=cpu", "stages.vocoder.dtype=bf16")
    vocoder = gen.stages[BUILTIN.index("vocoder")]
    assert vocoder.device == torch.device("cpu") and vocoder.dtype == torch.bfloat16
    assert next(vocoder.modules["vocoder"].parameters()).dtype == torch.bfloat16
    unet_stage = gen.stages[BUILTIN.index("denoiser")]
    assert next(unet_stage.modules["unet"].parameters()).dtype == torch.float32
    result = gen.generate()
    assert result.waveforms.dtype == np.float32 and np.isfinite(result.waveforms).all()
    # bf16 vocoding is close to, but not the same as, fp32: the cast at the stage boundary really happened.
    fp32 = make_generator("prompt=x").generate().waveforms
    diff = np.abs(result.waveforms - fp32).max()
    assert 0 < diff < 0.1


def test_stage_moves_its_inputs_to_its_placement(make_generator):
    gen = make_generator("prompt=x")
    stage = gen.stages[0]
    stage.dtype = torch.float64
    x = stage.to_stage(torch.ones(2, dtype=torch.float32))
    ids = stage.to_stage(torch.ones(2, dtype=torch.long))
    assert x.dtype == torch.float64 and ids.dtype == torch.long


def test_meta_placement_moves_modules_without_running(make_generator):
    gen = make_generator("prompt=x")
    vae_stage = gen.stages[BUILTIN.index("vae_decoder")]
    vae_stage.device = torch.device("meta")
    vae_stage.place()
    assert next(vae_stage.modules["vae"].parameters()).device.type == "meta"
    other = gen.stages[BUILTIN.index("vocoder")]
    assert next(other.modules["vocoder"].parameters()).device.type == "cpu"


def test_per_prompt_guidance_scales_give_each_prompt_its_result_alone():
    import torch

    from audioldm2_fast.stages.denoiser import apply_guidance
    from audioldm2_fast.stages.state import GenerationState

    def state(prompts, scales, n=2):
        return GenerationState(
            prompts=prompts, negative_prompts=None, num_waveforms=n, seed=0, guidance_scale=scales[0], steps=1,
            eta=0.0, audio_length_s=None, max_new_tokens=None, generator=torch.Generator(),
            item_guidance_scales=scales,
        )  # fmt: skip

    noise = torch.randn(2 * 3 * 2, 8, 5, 4)  # [uncond of 3 prompts x 2 candidates, text of the same]
    together = apply_guidance(noise, state(["a", "b", "c"], [2.5, 3.5, 7.0]))
    uncond, text = noise.chunk(2)
    for k, scale in enumerate([2.5, 3.5, 7.0]):
        rows = slice(2 * k, 2 * k + 2)
        alone = apply_guidance(torch.cat([uncond[rows], text[rows]]), state(["x"], [scale]))
        assert torch.equal(together[rows], alone)
