"""Our chain reproduces the stock diffusers AudioLDM2Pipeline for the same components, prompt and seed (fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TOLERANCE = 1e-5
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler"}


@pytest.fixture(scope="module")
def stock(tiny_dir):
    """The stock pipeline on the tiny checkpoint. Its GPT-2 loop needs GPT2LMHeadModel under transformers 5, so the
    same language-model weights are loaded into that class (the published checkpoints' workaround)."""
    import diffusers
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    pipe = AudioLDM2Pipeline.from_pretrained(tiny_dir)
    pipe.language_model = GPT2LMHeadModel.from_pretrained(tiny_dir / "language_model").eval()
    pipe.set_progress_bar_config(disable=True)
    base_scheduler_config = dict(pipe.scheduler.config)

    def run(scheduler: str, **kwargs):
        pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(base_scheduler_config)
        generator = torch.Generator("cpu").manual_seed(kwargs.pop("seed", 0))
        return pipe(generator=generator, **kwargs).audios

    return run


CASES = {
    "negative_prompt": dict(prompt="The sound of Brazilian samba drums", negative_prompt="Low quality."),
    "no_negative_prompt": dict(prompt="rain on a tin roof"),
    "two_prompts": dict(
        prompt=["a dog barking", "piano with soft rain in the background"],
        negative_prompt=["Low quality.", "loud crowd"],
    ),
    "no_guidance": dict(prompt="wind", guidance_scale=1.0),
    "length_not_latent_multiple": dict(prompt="birds", audio_length_in_s=1.01),
    "two_waveforms": dict(prompt="engine", num_waveforms_per_prompt=2, seed=3),
    "stochastic_eta": dict(prompt="thunder", eta=1.0, seed=7),  # DDIM draws noise from the generator every step
}


def _overrides(scheduler: str, case: dict) -> list[str]:
    def q(text):
        return "'" + text + "'"

    out = [f"scheduler={scheduler}", f"seed={case.get('seed', 0)}"]
    prompt = case["prompt"]
    out.append("prompt=" + (q(prompt) if isinstance(prompt, str) else "[" + ",".join(q(p) for p in prompt) + "]"))
    neg = case.get("negative_prompt")
    if neg is not None:
        out.append("negative_prompt=" + (q(neg) if isinstance(neg, str) else "[" + ",".join(q(p) for p in neg) + "]"))
    if "guidance_scale" in case:
        out.append(f"guidance_scale={case['guidance_scale']}")
    if "eta" in case:
        out.append(f"eta={case['eta']}")
    if "audio_length_in_s" in case:
        out.append(f"audio_length_s={case['audio_length_in_s']}")
    if "num_waveforms_per_prompt" in case:
        out += [f"num_waveforms={case['num_waveforms_per_prompt']}"]
    return out


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_stock_pipeline(scheduler, case, stock, make_generator):
    spec = dict(CASES[case])
    ours = make_generator(*_overrides(scheduler, spec)).generate().waveforms
    reference = stock(
        scheduler,
        prompt=spec["prompt"],
        negative_prompt=spec.get("negative_prompt"),
        guidance_scale=spec.get("guidance_scale", 3.5),
        audio_length_in_s=spec.get("audio_length_in_s", 1.0),
        num_waveforms_per_prompt=spec.get("num_waveforms_per_prompt", 1),
        num_inference_steps=4,
        eta=spec.get("eta", 0.0),
        seed=spec.get("seed", 0),
    )
    assert ours.shape == reference.shape
    assert np.isfinite(ours).all()
    assert np.abs(reference).max() > 1e-2, "reference audio is near zero: the comparison would be meaningless"
    diff = float(np.abs(ours - reference).max())
    assert diff <= TOLERANCE, f"max abs difference {diff:.2e} > {TOLERANCE:.0e}"
