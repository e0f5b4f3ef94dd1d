"""Each option of the precision, attention, compile, scheduler and offload groups, on the tiny checkpoint (CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.optimization import find_optimizations
from audioldm2_fast.config.paths import config_groups
from audioldm2_fast.config.validate import validate_config
from audioldm2_fast.runtime.devices import DeviceInfo
from audioldm2_fast.runtime.errors import ConfigError
from audioldm2_fast.stages.base import stage_placement
from audioldm2_fast.stages.registry import check_chain

H100 = DeviceInfo(type="cuda", name="NVIDIA H100", count=1, capability=(9, 0), bf16=True)
V100 = DeviceInfo(type="cuda", name="Tesla V100", count=1, capability=(7, 0), bf16=False)


def probe_with(gpu: DeviceInfo | None):
    def probe(kind: str):
        if kind in ("cpu", "meta"):
            return DeviceInfo(type=kind, name=kind)
        return gpu if kind == "cuda" else None

    return probe


def placements(*overrides: str, gpu: DeviceInfo | None = None) -> dict[str, tuple[str, torch.dtype]]:
    cfg = compose_config(["checkpoint=tiny", "prompt=x", *overrides])
    probe = probe_with(gpu)
    return {s: (str(d), t) for s, (d, t) in ((s, stage_placement(cfg, s, probe)) for s in cfg.pipeline.chain)}


# ----------------------------------------------------------------------------------------------------- precision


def test_half_precision_keeps_vae_and_vocoder_in_fp32():
    p = placements("precision=fp16", "device=cuda", gpu=H100)
    assert p["denoiser"][1] == p["text_encoders"][1] == p["prior"][1] == torch.float16
    assert p["vae_decoder"][1] == p["vocoder"][1] == torch.float32
    p = placements("precision=fp16", "device=cuda", "stages.vocoder.dtype=fp16", gpu=H100)
    assert p["vocoder"][1] == torch.float16 and p["vae_decoder"][1] == torch.float32
    p = placements("precision=fp16", "device=cuda", "precision.keep_fp32=[]", gpu=H100)
    assert p["vae_decoder"][1] == torch.float16


def test_auto_precision_follows_each_stage_device():
    assert placements("precision=auto", "device=cuda", gpu=H100)["denoiser"] == ("cuda", torch.bfloat16)
    assert placements("precision=auto", "device=cuda", gpu=V100)["denoiser"] == ("cuda", torch.float16)
    p = placements("precision=auto", "device=cuda", "stages.text_encoders.device=cpu", gpu=H100)
    assert p["text_encoders"] == ("cpu", torch.float32)
    assert set(placements("precision=auto")["denoiser"]) == {"cpu", torch.float32}


def test_bf16_run_casts_only_at_stage_boundaries(make_generator):
    gen = make_generator("prompt=x", "precision=bf16")
    dtypes = {s.name: s.dtype for s in gen.stages}
    assert dtypes["denoiser"] == torch.bfloat16 and dtypes["vae_decoder"] == dtypes["vocoder"] == torch.float32
    for stage in gen.stages:
        for module in stage.modules.values():
            if isinstance(module, torch.nn.Module):
                assert {p.dtype for p in module.parameters()} == {stage.dtype}, stage.name
    state = gen.new_state()
    produced = {"text_encoders": "t5_embeds", "prior": "generated_embeds", "denoiser": "latents", "vae_decoder": "mel"}
    for stage in gen.stages[:4]:
        state = stage(state)
        assert getattr(state, produced[stage.name]).dtype == stage.dtype, stage.name
    result = gen.generate()
    assert np.isfinite(result.waveforms).all() and np.abs(result.waveforms).max() > 1e-3


# ----------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("backend", ["math", "flash", "sliced"])
def test_attention_backends_that_run_on_cpu_match_sdpa(backend, make_generator):
    ref = make_generator("prompt=x").generate().waveforms
    gen = make_generator("prompt=x", f"attention={backend}")
    if backend == "sliced":
        unet = gen.stages[2].modules["unet"]
        assert {type(p).__name__ for p in unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    np.testing.assert_allclose(gen.generate().waveforms, ref, rtol=0, atol=1e-5)


def test_text_side_runs_on_sdpa_where_transformers_has_it(make_generator):
    gen = make_generator("prompt=x")
    impl = {
        name: m.config._attn_implementation
        for name, m in gen.store.loaded().items()
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    }
    assert impl["text_encoder_2"] == "sdpa" and impl["language_model"] == "sdpa"


def test_attention_kernel_is_restricted_inside_listed_stages():
    from types import SimpleNamespace

    attention = find_optimizations(compose_config(["checkpoint=tiny", "prompt=x", "attention=math"]))["attention"]
    with attention.context(SimpleNamespace(name="denoiser")):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    with attention.context(SimpleNamespace(name="vocoder")):
        assert torch.backends.cuda.flash_sdp_enabled()


@pytest.mark.parametrize("backend", ["efficient", "cudnn", "xformers"])
def test_attention_kernels_the_cpu_cannot_run_are_refused(backend):
    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"attention={backend}", "device=cpu"])
    with pytest.raises(ConfigError, match="CUDA"):
        validate_config(cfg)


def test_flash_on_cuda_needs_half_precision_and_sm80():
    cfg = compose_config(["checkpoint=tiny", "prompt=x", "attention=flash", "device=cuda"])
    with pytest.raises(ConfigError, match="fp16 or bf16"):
        validate_config(cfg, probe_with(H100))
    cfg = compose_config(["checkpoint=tiny", "prompt=x", "attention=flash", "device=cuda", "precision=fp16"])
    validate_config(cfg, probe_with(H100))
    with pytest.raises(ConfigError, match="sm80"):
        validate_config(cfg, probe_with(V100))


# ------------------------------------------------------------------------------------------------------- compile


@pytest.mark.slow
def test_compile_default_matches_eager_on_cpu(make_generator):
    eager = make_generator("prompt=x", "steps=2").generate().waveforms
    gen = make_generator("prompt=x", "steps=2", "compile=default", "compile.stages=[denoiser,vocoder]")
    assert type(gen.stages[2].modules["unet"]).__name__ == "OptimizedModule"
    assert type(gen.stages[4].modules["vocoder"]).__name__ == "OptimizedModule"
    compiled = gen.generate().waveforms
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-4)


def test_what_recompiles_and_what_does_not(make_generator):
    import torch._dynamo

    gen = make_generator("prompt=rain", "compile=default", "compile.backend=eager", "compile.fullgraph=true")
    counters = torch._dynamo.utils.counters["stats"]

    def graphs_after(**request) -> int:
        gen.generate(**request)
        return counters["unique_graphs"]

    first = graphs_after()
    assert graphs_after(seed=3) == first
    assert graphs_after(steps=2) == first
    assert graphs_after(guidance_scale=6.0) == first
    assert graphs_after(prompt="wind") == first  # same T5 token count as "rain"
    assert graphs_after(prompt="snow") > first  # spelled out by the tiny T5 vocabulary: more tokens
    before = counters["unique_graphs"]
    assert graphs_after(audio_length_s=1.01) > before  # another latent height, not a multiple of the up factor
    before = counters["unique_graphs"]
    assert graphs_after(guidance_scale=1.0) > before  # guidance off halves the batch


def test_length_buckets_reuse_the_compiled_graphs(make_generator):
    """Lengths inside one bucket share a latent shape (no new graph); each waveform is trimmed to its request."""
    import torch._dynamo

    torch._dynamo.reset()  # earlier tests compile the same UNet code; start below dynamo's recompile limit
    gen = make_generator(
        "prompt=rain", "steps=2", "compile=default", "compile.backend=eager", "compile.length_bucket_s=0.64"
    )
    counters = torch._dynamo.utils.counters["stats"]

    def run(length: float) -> tuple[int, int]:
        result = gen.generate(audio_length_s=length)
        return counters["unique_graphs"], result.waveforms.shape[1]

    first, samples = run(0.5)
    assert samples == 8000
    assert run(0.6) == (first, 9600)  # same bucket (64 mel frames): the graph is reused, the audio trimmed
    assert run(0.64) == (first, 10240)
    grown, samples = run(0.7)  # the next bucket: a new latent shape
    assert grown > first and samples == 11200


def test_a_length_on_a_bucket_edge_is_unchanged(make_generator):
    plain = make_generator("prompt=rain", "steps=2", "audio_length_s=1.28").generate()
    bucketed = make_generator("prompt=rain", "steps=2", "audio_length_s=1.28", "compile.length_bucket_s=0.64")
    assert np.array_equal(bucketed.generate().waveforms, plain.waveforms)


def test_compile_cache_dir_is_set_for_inductor(tmp_path, monkeypatch):

    from audioldm2_fast.accel.compile import configure_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    explicit = configure_compile_cache(str(tmp_path / "c"))
    assert explicit == tmp_path / "c" and explicit.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(explicit)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    assert configure_compile_cache(None) == tmp_path / "user"


def test_compile_settings_are_checked():
    for override, key in [
        ("compile.stages=[writer]", "compile.stages"),
        ("compile.fullgraph=maybe", "fullgraph"),
        ("compile.length_bucket_s=0", "compile.length_bucket_s"),
        ("compile.length_bucket_s=wide", "compile.length_bucket_s"),
        ("compile.cache_dir=[a]", "compile.cache_dir"),
    ]:
        cfg = compose_config(["checkpoint=tiny", "prompt=x", "compile=default", override])
        with pytest.raises(ConfigError, match=key):  # what needs the stage classes is checked with the chain
            check_chain(cfg, validate_config(cfg).optimizations)


# ----------------------------------------------------------------------------------------------------- scheduler

STOCK_CLASSES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpm_singlestep": "DPMSolverSinglestepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_ancestral": "KDPM2AncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "dpm_sde": "DPMSolverSDEScheduler",
}


def test_every_compatible_scheduler_has_an_option():
    assert set(config_groups()["scheduler"]) == set(STOCK_CLASSES)
    for name, cls in STOCK_CLASSES.items():
        cfg = compose_config([f"scheduler={name}"])
        assert cfg.scheduler.class_name == cls and cfg.scheduler.default_steps >= 20


@pytest.mark.parametrize("scheduler", list(STOCK_CLASSES))
def test_every_scheduler_runs_and_matches_stock(scheduler, make_generator, tiny_dir):
    import diffusers
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    ours = make_generator("prompt=rain", "negative_prompt=noise", f"scheduler={scheduler}", "seed=5").generate()
    assert np.isfinite(ours.waveforms).all()
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_dir)
    pipe.language_model = GPT2LMHeadModel.from_pretrained(tiny_dir / "language_model").eval()
    extra = {"noise_sampler_seed": 5} if scheduler == "dpm_sde" else {}
    pipe.scheduler = getattr(diffusers, STOCK_CLASSES[scheduler]).from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "rain",
        negative_prompt="noise",
        num_inference_steps=4,
        audio_length_in_s=1.0,
        generator=torch.Generator("cpu").manual_seed(5),
    ).audios
    assert np.abs(ours.waveforms - ref).max() <= 1e-5


# ------------------------------------------------------------------------------------------------------- offload


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_offload_needs_an_accelerator(mode):
    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"offload={mode}", "device=cpu"])
    with pytest.raises(ConfigError, match="accelerator"):
        validate_config(cfg)
    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"offload={mode}", "device=cuda"])
    validate_config(cfg, probe_with(H100))


class FakeStage:
    """Records placements instead of moving weights, so the offload logic can be checked without a GPU."""

    def __init__(self, name, device, log):
        self.name, self.device, self.log, self.modules = name, torch.device(device), log, {}

    def place(self, device=None):
        self.log.append((self.name, str(device or self.device)))


def test_model_offload_keeps_only_the_running_stage_on_the_accelerator():
    log: list = []
    stages = [
        FakeStage("text_encoders", "cuda", log),
        FakeStage("denoiser", "cuda:1", log),
        FakeStage("vocoder", "cpu", log),
    ]
    policy = find_optimizations(compose_config(["offload=model"]))["offload"]
    policy.setup(stages)
    assert log == [("text_encoders", "cpu"), ("denoiser", "cpu"), ("vocoder", "cpu")]
    log.clear()
    for stage in stages:
        policy.before(stage)
        log.append((stage.name, "run"))
        policy.after(stage)
    assert log == [
        ("text_encoders", "cuda"),
        ("text_encoders", "run"),
        ("text_encoders", "cpu"),
        ("denoiser", "cuda:1"),
        ("denoiser", "run"),
        ("denoiser", "cpu"),
        ("vocoder", "cpu"),
        ("vocoder", "run"),
    ]


def test_manual_placement_across_two_devices(make_generator):
    """Stages on two different placements (CPU and meta): each stage's modules go to its own device only."""
    gen = make_generator("prompt=x")
    vocoder = gen.stages[4]
    vocoder.device = torch.device("meta")
    gen.optimization("offload").setup(gen.stages)
    assert next(vocoder.modules["vocoder"].parameters()).device.type == "meta"
    assert next(gen.stages[2].modules["unet"].parameters()).device.type == "cpu"


def test_hook_offload_hooks_each_shared_module_once(make_generator, monkeypatch):
    from audioldm2_fast.accel.offload import Offload

    gen = make_generator("prompt=x", "num_waveforms=2")
    gen.stages[-2]._ensure_loaded()  # the ranker shares CLAP with text_encoders
    hooked = []
    monkeypatch.setattr(Offload, "_hook", lambda self, module, device: hooked.append(id(module)))
    for stage in gen.stages:
        if stage.name != "writer":
            stage.device = torch.device("cuda")
    find_optimizations(compose_config(["offload=sequential"]))["offload"].setup(gen.stages)
    # CLAP, T5, projection, GPT-2, UNet, VAE, vocoder: CLAP is shared with the ranker and hooked only once.
    assert len(hooked) == len(set(hooked)) == 7
