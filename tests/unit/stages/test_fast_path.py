"""The fast path, proven on the CPU: CLAP at the real token length, GPT-2 over a static cache, the solver as a pure
function of precomputed tables, and the capture machinery of ``graphs`` (with a stand-in for the CUDA graph)."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from audioldm2_fast.accel.graphs import Captured, GraphedMethod, signature
from audioldm2_fast.stages.kv_cache import StaticKVDecoder, generate_static
from audioldm2_fast.stages.prior import generate_hidden_states
from audioldm2_fast.stages.solvers import precompute

PROMPTS = ["rain on a tin roof", "a dog barking far away, then a door slams", ""]


# ---------------------------------------------------------------------------------------------------- text side


def _synthetic_store():
    from audioldm2_fast.checkpoints.resolve import synthetic_config_dir
    from audioldm2_fast.checkpoints.synthetic import SyntheticComponentStore

    return SyntheticComponentStore(synthetic_config_dir("audioldm2"))


def _clap_pooled(text_encoder, tokenizer, texts, padding, **kwargs):
    tokens = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = text_encoder.get_text_features(tokens.input_ids, attention_mask=tokens.attention_mask)
    return getattr(out, "pooler_output", out), tokens.input_ids.shape[1]


@pytest.mark.parametrize("checkpoint", ["tiny", "synthetic-audioldm2"])
def test_clap_at_the_real_token_length_equals_padding_to_512(checkpoint, tiny_dir):
    if checkpoint == "tiny":
        from audioldm2_fast.checkpoints.store import ComponentStore

        store = ComponentStore(tiny_dir)
    else:
        store = _synthetic_store()
    encoder, tokenizer = store.get("text_encoder", torch.float32, torch.device("cpu")), store.get("tokenizer")
    encoder.eval()
    limit = tokenizer.model_max_length  # 512 for the published CLAP, 77 for tiny's
    padded, padded_len = _clap_pooled(encoder, tokenizer, PROMPTS, "max_length", max_length=limit)
    short, short_len = _clap_pooled(encoder, tokenizer, PROMPTS, "longest")
    bucket, bucket_len = _clap_pooled(encoder, tokenizer, PROMPTS, "max_length", max_length=-(-short_len // 8) * 8)
    assert padded_len == limit and short_len < limit and bucket_len % 8 == 0 and bucket_len >= short_len
    assert torch.isfinite(padded).all() and padded.abs().max() > 0
    torch.testing.assert_close(short, padded, rtol=0, atol=1e-5)
    torch.testing.assert_close(bucket, padded, rtol=0, atol=1e-5)


def test_the_text_stage_pads_clap_to_the_bucket_of_its_longest_text(make_generator):
    gen = make_generator("prompt=x")
    stage = next(s for s in gen.stages if s.name == "text_encoders")
    tokenizer = stage.modules["tokenizer"]
    for texts in (["a", "b c d"], ["rain on a tin roof"], [" ".join(["word"] * 300)]):
        longest = max(len(tokenizer(t, truncation=True).input_ids) for t in texts)
        assert stage.clap_length(texts) == min(tokenizer.model_max_length, -(-longest // 8) * 8)
    stock = make_generator("prompt=x", "stages.text_encoders.clap_padding=max_length")
    assert next(s for s in stock.stages if s.name == "text_encoders").clap_length(["a"]) == tokenizer.model_max_length


def test_clap_padding_does_not_change_the_audio_beyond_rounding(make_generator):
    request = dict(prompt="rain on a tin roof", negative_prompt="low quality", seed=2)
    ours = make_generator("prompt=x").generate(**request).waveforms
    stock = make_generator("prompt=x", "stages.text_encoders.clap_padding=max_length").generate(**request).waveforms
    assert np.abs(ours).max() > 0
    np.testing.assert_allclose(ours, stock, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- GPT-2 prior


def _language_model(cls_name, tiny_dir=None):
    import transformers

    if tiny_dir is not None:
        return getattr(transformers, cls_name).from_pretrained(tiny_dir / "language_model").eval()
    config = _synthetic_store().config("language_model")
    config = transformers.GPT2Config(**{k: v for k, v in config.items() if not k.startswith("_")})
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def _prompt(lm, batch=3, length=11):
    torch.manual_seed(1)
    embeds = torch.randn(batch, length, lm.config.n_embd)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:9] = 0  # T5 padding sits inside the projected sequence, before its end token
    mask[2, 3] = 0
    return embeds, mask


@pytest.mark.parametrize("cls_name", ["GPT2Model", "GPT2LMHeadModel"])
@pytest.mark.parametrize("size", ["tiny", "full"])
def test_static_cache_loop_equals_transformers_cache(cls_name, size, tiny_dir):
    lm = _language_model(cls_name, tiny_dir if size == "tiny" else None)
    embeds, mask = _prompt(lm)
    reference = generate_hidden_states(lm, embeds, mask, max_new_tokens=8)
    ours = generate_static(StaticKVDecoder(getattr(lm, "transformer", lm)), embeds, mask, max_new_tokens=8)
    assert ours.shape == reference.shape == (3, 8, lm.config.n_embd)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


class _OpLog(TorchDispatchMode):
    """Every aten op with its argument shapes, and whether any reads a value back to the host."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)
        self.ops.append((str(func), shapes))
        return func(*args, **(kwargs or {}))


def test_every_generated_token_runs_the_same_shapes(tiny_dir):
    """After the prompt pass, each generated token's pass is the same ops on the same shapes: nothing grows."""
    lm = _language_model("GPT2Model", tiny_dir)
    decoder = StaticKVDecoder(lm)
    embeds, mask = _prompt(lm)
    passes: list[list[tuple]] = []

    def logged(hidden, positions, visible, cache):
        with _OpLog() as log:
            out = decoder(hidden, positions, visible, cache)
        passes.append(log.ops)
        return out

    logged.new_cache = decoder.new_cache  # generate_static asks the (possibly compiled) decoder for its cache
    generate_static(logged, embeds, mask, max_new_tokens=8)
    assert len(passes) == 8
    assert all(p == passes[1] for p in passes[2:])  # every generated token: identical ops and shapes
    assert passes[0] != passes[1]  # the prompt pass is the one other shape
    assert not any("_local_scalar_dense" in op for p in passes for op, _ in p)  # nothing read back to the host


def test_the_prior_uses_the_static_cache_for_both_classes(make_generator):
    for cls_name in ("GPT2Model", "GPT2LMHeadModel"):
        gen = make_generator("prompt=x", f"checkpoint.tiny.language_model_class={cls_name}")
        prior = next(s for s in gen.stages if s.name == "prior")
        assert isinstance(prior.decoder, StaticKVDecoder)
        assert prior.compile_targets() == [(prior, "decoder")]


# ---------------------------------------------------------------------------------------------------- solver


def _published_scheduler_config() -> dict:
    """cvssp/audioldm2's own scheduler_config.json (as packaged)."""
    import json

    from audioldm2_fast.checkpoints.resolve import synthetic_config_dir

    path = synthetic_config_dir("audioldm2") / "scheduler" / "scheduler_config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


BASE_SCHEDULER = _published_scheduler_config()
VARIANTS = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_heun": ("DPMSolverMultistepScheduler", {"solver_type": "heun"}),
    "dpmpp_2m_v": ("DPMSolverMultistepScheduler", {"prediction_type": "v_prediction"}),
    "dpmpp_2m_karras_no_lower_final": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    ),
    "ddim": ("DDIMScheduler", {}),
    "ddim_v": ("DDIMScheduler", {"prediction_type": "v_prediction"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_v": ("EulerDiscreteScheduler", {"prediction_type": "v_prediction"}),
}


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in UNet: a fixed nonlinear function of the input and the timestep."""
    return torch.tanh(0.7 * x + 0.001 * t.float()) + 0.1 * torch.sin(3.0 * x)


def _run_scheduler(scheduler, latents, guidance, eta, generator):
    import inspect

    kwargs = {}
    if "eta" in inspect.signature(scheduler.step).parameters:
        kwargs = {"eta": eta, "generator": generator}
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if guidance else latents
        noise_pred = _model(scheduler.scale_model_input(model_input, t), t)
        if guidance:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + 3.5 * (text - uncond)
        latents = scheduler.step(noise_pred, t, latents, **kwargs).prev_sample
    return latents


def _run_solver(solver, latents, guidance, noise):
    scales = torch.full((latents.shape[0], 1, 1, 1), 3.5) if guidance else None
    previous = None
    for i in range(solver.steps):
        model_input = torch.cat([latents] * 2) if guidance else latents
        noise_pred = _model(solver.scale_input(i, model_input), solver.timesteps[i])
        if guidance:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + scales * (text - uncond)
        latents, previous = solver.step(i, latents, noise_pred, previous, None if noise is None else noise[i])
    return latents


@pytest.mark.parametrize("guidance", [True, False], ids=["guidance", "no_guidance"])
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 25])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_precomputed_solver_equals_the_scheduler(variant, steps, guidance):
    class_name, extra = VARIANTS[variant]
    scheduler = getattr(diffusers, class_name).from_config({**BASE_SCHEDULER, **extra})
    scheduler.set_timesteps(steps)
    solver = precompute(scheduler, "cpu")
    assert solver is not None and solver.steps == steps
    latents = torch.randn(2, 8, 16, 4, generator=torch.Generator().manual_seed(steps)) * scheduler.init_noise_sigma
    expected = _run_scheduler(scheduler, latents, guidance, 0.0, None)
    got = _run_solver(solver, latents, guidance, None)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_stochastic_ddim_draws_the_same_noise_before_the_loop(steps):
    scheduler = diffusers.DDIMScheduler.from_config(BASE_SCHEDULER)
    scheduler.set_timesteps(steps)
    solver = precompute(scheduler, "cpu", eta=1.0)
    assert solver.stochastic
    latents = torch.randn(2, 8, 16, 4, generator=torch.Generator().manual_seed(0))
    expected = _run_scheduler(scheduler, latents, True, 1.0, torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    noise = torch.stack([torch.randn(latents.shape, generator=draws) for _ in range(steps)])
    torch.testing.assert_close(_run_solver(solver, latents, True, noise), expected, rtol=0, atol=1e-6)


def test_schedulers_without_a_table_keep_the_scheduler_object():
    for class_name, extra in [
        ("PNDMScheduler", {}),
        ("DPMSolverMultistepScheduler", {"solver_order": 3}),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("DDIMScheduler", {"clip_sample": True}),
        ("DDIMScheduler", {"thresholding": True}),
    ]:
        scheduler = getattr(diffusers, class_name).from_config({**BASE_SCHEDULER, **extra})
        scheduler.set_timesteps(10)
        assert precompute(scheduler, "cpu") is None, (class_name, extra)


def test_a_solver_step_reads_nothing_back_and_copies_nothing_to_the_device():
    """On the meta device any read of a value to the host fails, and a tensor made on the host inside the step would
    not mix with meta tensors: a step that runs there has neither."""
    for class_name, extra in VARIANTS.values():
        scheduler = getattr(diffusers, class_name).from_config({**BASE_SCHEDULER, **extra})
        scheduler.set_timesteps(5)
        solver = precompute(scheduler, "meta", eta=0.0)
        assert solver.coeffs.device.type == "meta" and solver.timesteps.device.type == "meta"
        latents = torch.empty(2, 8, 16, 4, device="meta")
        previous = None
        with _OpLog() as log:
            for i in range(solver.steps):
                latents, previous = solver.step(i, latents, torch.empty_like(latents), previous)
        assert latents.device.type == "meta"
        assert not any("_local_scalar_dense" in op or "_to_copy" in op for op, _ in log.ops), class_name


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "ddim", "euler"])
@pytest.mark.parametrize("guidance", ["3.5", "1.0"])
def test_the_denoiser_equals_its_scheduler_path(scheduler, guidance, make_generator):
    """The whole chain, the precomputed loop against diffusers' scheduler object: the same latents, bit for bit."""
    overrides = ["prompt=x", f"scheduler={scheduler}", f"guidance_scale={guidance}", "audio_length_s=0.64"]
    request = dict(prompt="rain on a tin roof", negative_prompt="low quality", seed=1, output_type="latent")
    ours = make_generator(*overrides).generate(**request).latents
    stock = make_generator(*overrides, "stages.denoiser.solver=scheduler").generate(**request).latents
    assert torch.isfinite(ours).all() and ours.abs().max() > 0
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_the_denoising_loop_reads_nothing_back_to_the_host(make_generator):
    """The UNet, guidance and solver loop of a real call: no op reads a tensor's value to the host."""
    gen = make_generator("prompt=x", "audio_length_s=0.64")
    denoiser = next(s for s in gen.stages if s.name == "denoiser")
    state = gen.new_state(prompt="rain", negative_prompt="noise")
    for stage in gen.stages[:2]:
        state = stage(state)
    real = denoiser.denoise
    ops: list[tuple] = []

    def logged(*args, **kwargs):
        with _OpLog() as log:
            out = real(*args, **kwargs)
        ops.extend(log.ops)
        return out

    denoiser.denoise = logged
    denoiser(state)
    assert any("convolution" in op for op, _ in ops)  # the UNet ran inside
    assert not any("_local_scalar_dense" in op for op, _ in ops)


# ---------------------------------------------------------------------------------------------------- graphs


class _StandInCapture:
    """What CudaCapture does, without a GPU: the method runs once on the static inputs at capture, and each replay
    runs it again on whatever the static inputs hold and writes into the same output tensors."""

    def __init__(self, fail: bool = False):
        self.captured = 0
        self.fail = fail

    def __call__(self, fn, inputs, static):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured += 1
        outputs = fn(*inputs, **static)

        def replay():
            fresh = fn(*inputs, **static)
            for out, new in zip(*(o if isinstance(o, tuple) else (o,) for o in (outputs, fresh)), strict=True):
                out.copy_(new)

        return Captured(inputs=inputs, replay=replay, outputs=outputs)


def test_a_graphed_method_captures_once_per_signature_and_replays_with_new_inputs():
    calls = []

    def work(x, y, *, scale):
        calls.append(x.shape)
        return x * scale + (0 if y is None else y), x.sum(dim=-1)

    capture = _StandInCapture()
    method = GraphedMethod(work, "stage.work", capture, max_shapes=2)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    first = method(a, None, scale=2.0)
    second = method(b, None, scale=2.0)  # same signature: a replay, on b's values
    torch.testing.assert_close(second[0], b * 2.0)
    torch.testing.assert_close(first[0], a * 2.0)  # the first result was copied out, not overwritten
    assert capture.captured == 1 and method.replays == 2
    method(b, b, scale=2.0)  # None -> tensor: another signature
    method(b, None, scale=3.0)  # another keyword value: another signature
    assert capture.captured == 3 and len(method.entries) == 2  # max_shapes: the least recently used went
    assert signature((a, None), {"scale": 2.0}) not in method.entries
    with pytest.raises(TypeError, match="tensors"):
        method(a, 3, scale=2.0)


def test_a_failed_capture_runs_that_shape_uncaptured(caplog):
    method = GraphedMethod(lambda x: x + 1, "stage.work", _StandInCapture(fail=True))
    x = torch.zeros(2)
    torch.testing.assert_close(method(x), x + 1)
    torch.testing.assert_close(method(x), x + 1)
    assert len(method.uncaptured) == 1 and not method.entries
    assert caplog.text.count("runs uncaptured") == 1


def test_every_stage_captured_whole_gives_the_same_audio(make_generator):
    """Each stage's graphed method replaced by captures (the stand-in), through the Generator: the same waveforms
    as the plain call, a capture on the first call of a shape and replays after it."""
    request = dict(prompt="rain on a tin roof", negative_prompt="low quality", seed=4)
    plain = make_generator("prompt=x").generate(**request).waveforms
    gen = make_generator("prompt=x")
    capture = _StandInCapture()
    methods = []
    for stage in gen.stages:
        for name in stage.graphed:
            method = GraphedMethod(getattr(stage, name), f"{stage.name}.{name}", capture)
            setattr(stage, name, method)
            methods.append(method)
    assert {m.label for m in methods} == {
        "text_encoders.encode",
        "prior.generate",
        "denoiser.denoise",
        "vae_decoder.decode",
        "vocoder.waveform",
    }
    first = gen.generate(**request).waveforms
    again = gen.generate(**request).waveforms
    other = gen.generate(**{**request, "seed": 5}).waveforms
    assert capture.captured == 5 and all(m.replays == 3 for m in methods)
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(again, plain)
    assert np.abs(other - plain).max() > 0  # a replay really runs on the new inputs


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["graphs=cuda"], "graphs"),  # no CUDA stage here
        (["graphs=cuda", "stages.vocoder.device=cpu"], "graphs"),
        (["graphs=auto", "graphs.stages=[ranker]"], "graphs.stages"),
        (["graphs=auto", "graphs.mode=sometimes"], "graphs.mode"),
        (["graphs=auto", "graphs.max_shapes=0"], "graphs.max_shapes"),
    ],
)
def test_graph_settings_are_checked_before_loading(overrides, key):
    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.generator import Generator
    from audioldm2_fast.runtime.errors import ConfigError

    cfg = compose_config(["checkpoint=tiny", "prompt=x", "device=cpu", *overrides])
    with pytest.raises(ConfigError) as info:
        Generator(cfg)
    assert info.value.key == key


def test_graph_rules_on_a_described_gpu():
    """On CUDA, captures refuse what moves weights or records its own graphs, and accept the rest."""
    from support import H100, probe_with

    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.config.validate import validate_config
    from audioldm2_fast.runtime.errors import ConfigError

    def check(*overrides):
        cfg = compose_config(["checkpoint=tiny", "prompt=x", "device=cuda", *overrides])
        validate_config(cfg, probe=probe_with(H100))

    check("graphs=cuda")
    check("graphs=cuda-inductor", "precision=bf16")
    check("experiment=fastest")
    check("graphs=cuda", "compile=default")
    for overrides, key in [
        (["graphs=cuda", "offload=model"], "graphs"),
        (["graphs=auto", "compile=reduce-overhead"], "compile"),
        (["graphs=auto", "compile=auto"], "compile"),
    ]:
        with pytest.raises(ConfigError) as info:
            check(*overrides)
        assert info.value.key == key, overrides
    # graphs=auto on the CPU is a documented no-op: accepted, with offload and compile modes it would refuse on CUDA.
    cpu = compose_config(["checkpoint=tiny", "prompt=x", "device=cpu", "graphs=auto", "compile=reduce-overhead"])
    assert validate_config(cpu) is not None
