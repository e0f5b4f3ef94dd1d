"""The GPT-2 prior works with GPT2Model (as published) and GPT2LMHeadModel; the stock pipeline fails on GPT2Model."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_gpt2model_and_lmheadmodel_give_the_same_audio(make_generator):
    a = make_generator("prompt=x", "checkpoint.tiny.language_model_class=GPT2Model")
    b = make_generator("prompt=x", "checkpoint.tiny.language_model_class=GPT2LMHeadModel")
    assert type(a.store.get("language_model")).__name__ == "GPT2Model"
    assert type(b.store.get("language_model")).__name__ == "GPT2LMHeadModel"
    np.testing.assert_array_equal(a.generate().waveforms, b.generate().waveforms)


def test_cached_loop_matches_full_recomputation(tiny_dir):
    """The KV-cached loop equals recomputing the whole sequence at every step (what the stock loop does)."""
    from transformers import GPT2Model

    from audioldm2_fast.stages.prior import generate_hidden_states

    lm = GPT2Model.from_pretrained(tiny_dir / "language_model").eval()
    torch.manual_seed(0)
    embeds = torch.randn(3, 9, lm.config.n_embd)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, -3:] = 0  # a right-padded row, as T5 padding produces
    ours = generate_hidden_states(lm, embeds, mask, max_new_tokens=8)
    seq, m = embeds, mask
    with torch.no_grad():
        for _ in range(8):
            h = lm(inputs_embeds=seq, attention_mask=m).last_hidden_state[:, -1:]
            seq = torch.cat([seq, h], 1)
            m = torch.cat([m, m.new_ones(3, 1)], 1)
    torch.testing.assert_close(ours, seq[:, -8:], rtol=0, atol=1e-5)


def test_stock_pipeline_fails_on_gpt2model(tiny_dir):
    """Documents why our own loop exists: diffusers #12630 with transformers 5."""
    import transformers
    from diffusers import AudioLDM2Pipeline

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the upstream failure is specific to transformers 5")
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.language_model).__name__ == "GPT2Model"
    with pytest.raises(AttributeError, match="_update_model_kwargs_for_generation"):
        pipe("x", num_inference_steps=1, audio_length_in_s=0.32)


def test_max_new_tokens_controls_the_prior_length(make_generator):
    gen = make_generator("prompt=x", "max_new_tokens=3")
    state = gen.new_state()
    for stage in gen.stages[:2]:
        state = stage(state)
    assert state.generated_embeds.shape[1] == 3
