"""The Python API as a diffusers user expects it: built once with keyword settings, called many times, with
``latents``, precomputed prompt embeddings, a per-step callback, ``output_type`` and a context manager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioldm2_fast import Generator
from audioldm2_fast.runtime.errors import ConfigError

KEYS = {"checkpoint": "tiny", "scheduler": "ddim", "steps": 3, "audio_length_s": 1.0}


@pytest.fixture(scope="module")
def gen():
    with Generator.from_config(write=False, **KEYS) as generator:
        yield generator


def test_keyword_settings_equal_override_strings_and_no_prompt_is_needed_to_build(gen):
    by_strings = Generator.from_config(
        ["checkpoint=tiny", "scheduler=ddim", "steps=3", "audio_length_s=1.0", "prompt=rain", "seed=4"], write=False
    )
    expected = by_strings.generate().waveforms
    np.testing.assert_array_equal(gen(prompt="rain", seed=4).waveforms, expected)
    other = gen(prompt=["wind", "a dog barking"], seed=5, num_waveforms=2)  # the same object, called again
    assert other.waveforms.shape == (4, 16000) and other.prompts == ["wind", "a dog barking"]
    with pytest.raises(ConfigError, match="prompt"):
        gen(seed=1)


def test_nested_keyword_settings_set_keys():
    gen = Generator.from_config(write=False, stages={"vocoder": {"dtype": "bf16"}}, **KEYS)
    assert next(s for s in gen.stages if s.name == "vocoder").dtype == torch.bfloat16


def test_latents_replace_the_seeded_noise(gen):
    from diffusers.utils.torch_utils import randn_tensor

    latents = randn_tensor((1, 8, 25, 16), generator=torch.Generator("cpu").manual_seed(7))
    np.testing.assert_array_equal(
        gen(prompt="rain", seed=0, latents=latents).waveforms, gen(prompt="rain", seed=7).waveforms
    )
    with pytest.raises(ConfigError, match="latents"):
        gen(prompt="rain", latents=torch.zeros(1, 8, 3, 16))


def _text_side(gen, prompt: str, t5_length: int | None = None):
    state = gen.new_state(prompt=prompt, guidance_scale=1.0)
    state.t5_length = t5_length  # the stock pipeline pads a negative's T5 tokens to the prompt's length
    for stage in gen.stages[:2]:
        state = stage(state)
    return state.t5_embeds, state.t5_mask, state.generated_embeds


def test_precomputed_prompt_embeddings_give_the_prompts_audio(gen):
    expected = gen(prompt="rain on a tin roof", negative_prompt="low quality", seed=2).waveforms
    embeds, mask, generated = _text_side(gen, "rain on a tin roof")
    out = gen(
        prompt_embeds=embeds,
        attention_mask=mask,
        generated_prompt_embeds=generated,
        negative_prompt="low quality",
        seed=2,
    )
    # The prompt's text side ran alone here and beside its negative there: the same values to float rounding (a
    # GEMM may round a row differently at another row count).
    np.testing.assert_allclose(out.waveforms, expected, rtol=0, atol=1e-5)
    neg_embeds, neg_mask, neg_generated = _text_side(gen, "low quality", t5_length=embeds.shape[1])
    given = gen(
        prompt_embeds=embeds,
        attention_mask=mask,
        generated_prompt_embeds=generated,
        negative_prompt_embeds=neg_embeds,
        negative_attention_mask=neg_mask,
        negative_generated_prompt_embeds=neg_generated,
        seed=2,
    )
    np.testing.assert_allclose(given.waveforms, expected, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="prompt_embeds"):
        gen(prompt="rain", prompt_embeds=embeds, generated_prompt_embeds=generated)
    with pytest.raises(ConfigError, match="generated_prompt_embeds"):
        gen(prompt_embeds=embeds)


def test_a_step_callback_sees_every_step_and_may_replace_the_latents(gen):
    seen = []

    def keep(step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"]}

    expected = gen(prompt="rain", seed=1).waveforms
    np.testing.assert_array_equal(gen(prompt="rain", seed=1, callback_on_step_end=keep).waveforms, expected)
    assert [s for s, _, _ in seen] == [0, 1, 2] and seen[0][2] == (1, 8, 25, 16)
    zeroed = gen(
        prompt="rain", seed=1, callback_on_step_end=lambda s, t, x: {"latents": torch.zeros_like(x["latents"])}
    )
    assert not np.allclose(zeroed.waveforms, expected)


def test_output_types(gen):
    pt = gen(prompt="rain", seed=1, output_type="pt")
    assert isinstance(pt.waveforms, torch.Tensor)
    np.testing.assert_array_equal(pt.waveforms.numpy(), gen(prompt="rain", seed=1).waveforms)
    latent = gen(prompt="rain", seed=1, output_type="latent")
    assert latent.waveforms is None and latent.latents.shape == (1, 8, 25, 16)
    assert set(latent.timings) == {"text_encoders", "prior", "denoiser"}
    with pytest.raises(ConfigError, match="output_type"):
        gen(prompt="rain", output_type="mp3")


def test_the_context_manager_frees_the_modules():
    with Generator.from_config(write=False, **KEYS) as gen:
        gen(prompt="rain")
        stages = gen.stages
    assert all(not stage.modules for stage in stages)
