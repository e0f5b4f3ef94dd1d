"""Long audio in bounded memory: exact sub-batching and chunking, approximate VAE chunking, OOM messages, RSS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import child_env

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.validate import validate_config
from audioldm2_fast.runtime.errors import ConfigError
from audioldm2_fast.stages.chunks import chunked_along_time, time_chunks

NO_WRITER = "pipeline.chain=[text_encoders,prior,denoiser,vae_decoder,vocoder]"


def test_time_chunk_cores_tile_the_range_once():
    for length, chunk, overlap in [(10, 3, 2), (9, 3, 0), (5, 8, 4), (100, 7, 50)]:
        windows = list(time_chunks(length, chunk, overlap))
        cores = [i for _, _, a, b in windows for i in range(a, b)]
        assert cores == list(range(length))
        for start, end, a, b in windows:
            assert start == max(0, a - overlap) and end == min(length, b + overlap)


def test_exact_memory_options_match_the_plain_run(make_generator):
    """Sub-batches, query chunks and vocoder chunks change only the order of float operations: parity tolerance."""
    common = ["prompt=[rain,wind]", "num_waveforms=2", "audio_length_s=4.0", "steps=2", NO_WRITER]
    plain = make_generator(*common).generate().waveforms
    for options in [
        ["memory.unet_batch_size=1"],  # guidance halves and candidates one at a time
        ["memory.attention_chunk_size=37"],
        ["memory.decode_batch_size=1"],
        ["memory.vocoder_chunk_frames=64", "memory.vocoder_overlap_frames=32"],
    ]:
        chunked = make_generator(*common, *options).generate().waveforms
        assert chunked.shape == plain.shape
        assert np.abs(chunked - plain).max() <= 1e-5, options


def test_vocoder_chunks_without_overlap_are_not_exact(make_generator):
    """The overlap is what makes vocoder chunks exact: without it, chunk edges lose their context."""
    common = ["prompt=rain", "audio_length_s=4.0", "steps=2", NO_WRITER]
    plain = make_generator(*common).generate().waveforms
    cut = make_generator(*common, "memory.vocoder_chunk_frames=64", "memory.vocoder_overlap_frames=0").generate()
    assert np.abs(cut.waveforms - plain).max() > 1e-3


def test_vae_chunking_is_approximate_and_converges_with_overlap(tiny_dir):
    """GroupNorm statistics (and the mid-block attention) span the whole length, so VAE chunks are approximate.

    Tolerance: with 4 chunks and 64 latent frames of context, the mean abs difference stays under 3.5% of the mel's
    standard deviation (measured 3.0%; without context 6%), and more context never makes it worse. That is the
    order of bf16 decoding (1.2% here), not the parity tolerance: the planner uses VAE chunks only as a last resort,
    after every exact option and model offload, and README says so.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae").eval()
    latents = torch.randn(2, vae.config.latent_channels, 512, 16, generator=torch.Generator().manual_seed(0))

    def decode(x):
        return vae.decode(x).sample

    with torch.no_grad():
        full = decode(latents)
        errors = [
            float(
                (chunked_along_time(decode, latents, dim=2, out_dim=2, scale=4, chunk=128, overlap=o) - full)
                .abs()
                .mean()
            )
            for o in (0, 16, 64)
        ]
        whole = chunked_along_time(decode, latents, dim=2, out_dim=2, scale=4, chunk=None, overlap=16)
    assert torch.equal(whole, full)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] <= 0.035 * float(full.std())


def test_memory_settings_are_checked():
    for override, key in [
        ("memory.budget_gb=0", "memory.budget_gb"),
        ("memory.unet_batch_size=0", "memory.unet_batch_size"),
        ("memory.vae_chunk_frames=half", "memory.vae_chunk_frames"),
        ("memory.vocoder_overlap_frames=-1", "memory.vocoder_overlap_frames"),
    ]:
        with pytest.raises(ConfigError, match=key):
            validate_config(compose_config(["checkpoint=tiny", "prompt=x", override]))
    with pytest.raises(ConfigError, match="memory.attention_chunk_size"):
        validate_config(
            compose_config(["checkpoint=tiny", "prompt=x", "attention=sliced", "memory.attention_chunk_size=64"])
        )


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = child_env()
    cmd = [sys.executable, "-m", "audioldm2_fast", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_out_of_memory_is_one_line_naming_stage_and_remedies(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.wav").write_bytes(b"keep me")
    proc = _cli(
        [
            "checkpoint=tiny",
            "prompt=rain",
            "steps=2",
            "audio_length_s=1.0",
            f"output.dir={out}",
            "stages.vocoder.impl=custom_stages:OutOfMemoryVocoder",
        ],
        tmp_path,
    )
    assert proc.returncode == 7, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    line = errors[0]
    assert "stage vocoder ran out of memory" in line and "2.00 GiB" in line
    for remedy in ("memory.budget_gb", "offload=model", "audio_length_s"):
        assert remedy in line
    assert (out / "earlier.wav").read_bytes() == b"keep me"


def _peak_rss_growth_mb(*overrides: str) -> float:
    """Peak RSS during one generate call above the RSS before it, in a fresh process (loading excluded: the kernel's
    high-water mark is reset after the model loads, through /proc/self/clear_refs)."""
    script = (
        "import re, sys\n"
        "from audioldm2_fast.config.compose import compose_config\nfrom audioldm2_fast.generator import Generator\n"
        "def status(key):\n"
        "    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "g = Generator(compose_config(sys.argv[1:]))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        "g.generate()\n"
        "print((status('VmHWM') - before) / 1024)\n"
    )
    args = ["checkpoint=tiny", "prompt=rain", "steps=2", "progress=false", NO_WRITER, *overrides]
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return float(proc.stdout.strip().splitlines()[-1])


LONG_AUDIO_MEMORY = [
    "memory.unet_batch_size=1",
    "memory.attention_chunk_size=1024",
    "memory.vae_chunk_frames=256",
    "memory.vocoder_chunk_frames=1000",
]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_sixty_seconds_on_cpu_run_in_bounded_memory():
    """With the memory options, 60 s costs about as much peak memory as 10 s; without them it costs far more."""
    short = _peak_rss_growth_mb("audio_length_s=10", *LONG_AUDIO_MEMORY)
    long = _peak_rss_growth_mb("audio_length_s=60", *LONG_AUDIO_MEMORY)
    unbounded = _peak_rss_growth_mb("audio_length_s=60")
    assert long <= 1.5 * short + 48, (short, long)
    assert unbounded > long + 100, (long, unbounded)


# ------------------------------------------------------------------------------------------------ memory.budget_gb


GIB = 2**30


@pytest.fixture(scope="module")
def base_150s():
    """The published base model on ``meta``, 4 x 150 s with guidance: fp16 UNet, fp32 VAE and vocoder, on CUDA."""
    from audioldm2_fast.accel.memory_plan import ACCELERATOR_MARGIN, ActivationTracer, Workload
    from audioldm2_fast.checkpoints.resolve import synthetic_config_dir
    from audioldm2_fast.checkpoints.synthetic import SyntheticComponentStore
    from audioldm2_fast.stages.geometry import audio_geometry

    store = SyntheticComponentStore(synthetic_config_dir("audioldm2"))
    dtypes = {"denoiser": torch.float16, "vae_decoder": torch.float32, "vocoder": torch.float32}
    unet = store.get("unet", torch.float16, "meta")
    vae, vocoder = store.get("vae", torch.float32, "meta"), store.get("vocoder", torch.float32, "meta")

    def size(*names, dtype_bytes=2):
        return sum(p.numel() for n in names for p in store.get(n, torch.float16, "meta").parameters()) * dtype_bytes

    weights = {
        "text_encoders": size("text_encoder", "text_encoder_2"),
        "prior": size("projection_model", "language_model"),
        "denoiser": size("unet"),
        "vae_decoder": size("vae", dtype_bytes=4),
        "vocoder": size("vocoder", dtype_bytes=4),
    }
    geometry = audio_geometry(150, store.config("vocoder"), store.config("vae"), store.config("unet"))

    def work(dtypes=dtypes, fused=True, margin=ACCELERATOR_MARGIN, weights=weights):
        tracer = ActivationTracer(
            geometry,
            8,
            4,
            unet=unet,
            vae=vae,
            vocoder=vocoder,
            dtypes=dtypes,
            fused={"denoiser": fused, "vae_decoder": fused},
            margin=dict.fromkeys(("denoiser", "vae_decoder", "vocoder"), margin),
        )
        return Workload(unet_rows=8, waveforms=4, weight_bytes=weights, activations=tracer)

    return work


def _plan(budget, work, *overrides, on_accelerator=True, allowed=None):
    from audioldm2_fast.accel.memory_plan import plan_memory

    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"memory.budget_gb={budget}", *overrides])
    return plan_memory(cfg, work, on_accelerator, allowed)


def test_live_tensor_bytes_counts_what_is_alive_at_once():
    from audioldm2_fast.accel.memtrace import LiveTensorBytes

    weight = torch.ones(1000)
    with LiveTensorBytes(ignore=[weight]) as mode:
        a = weight * 2  # 4000 bytes
        b = torch.empty(500, dtype=torch.float16)  # 1000
        view = a[10:]  # shares a's storage: nothing new
        del a
        c = torch.empty(2000, dtype=torch.uint8)  # a is still alive through its view
        assert mode.live == 7000
        del view, b, c
        d = weight.view(10, 100)  # a view of an ignored tensor
    assert mode.peak == 7000 and mode.live == 0
    assert d.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()


def test_meta_trace_equals_the_trace_of_a_real_run(tiny_dir):
    """On ``meta`` nothing is computed, yet the same tensors are made: the peak is the one a real run holds."""
    from audioldm2_fast.accel.memtrace import meta_twin, peak_activation_bytes
    from audioldm2_fast.checkpoints.store import ComponentStore
    from audioldm2_fast.stages.vae_decoder import decode_latents

    vae = ComponentStore(tiny_dir).get("vae", torch.float32)
    twin = meta_twin(vae, torch.float32)
    memory = {"decode_batch_size": 1, "vae_chunk_frames": 16, "vae_overlap_frames": 4}
    latents = torch.randn(2, vae.config.latent_channels, 50, 8)
    real = peak_activation_bytes(lambda x: decode_latents(vae, x, memory), latents, module=vae)
    meta = peak_activation_bytes(lambda x: decode_latents(twin, x, memory), latents.to("meta"), module=twin)
    assert real == meta > 0


def test_the_tracer_bounds_a_trace_of_the_stages_own_chunked_code(base_150s):
    """The planner traces one sub-batch and one window; the stages run them all. Within 25%, never under."""
    from audioldm2_fast.accel.memtrace import peak_activation_bytes
    from audioldm2_fast.stages.denoiser import predict_noise
    from audioldm2_fast.stages.vae_decoder import decode_latents
    from audioldm2_fast.stages.vocoder import vocode

    tracer = base_150s(margin=1.0).activations
    unet, vae, vocoder = (tracer.modules[n] for n in ("denoiser", "vae_decoder", "vocoder"))
    frames, bins = tracer.geometry.latent_hw
    latents = torch.empty(4, 8, frames, bins, device="meta")
    mel = torch.empty(4, tracer.geometry.mel_frames, tracer.geometry.mel_bins, device="meta")
    x = torch.empty(8, 8, frames, bins, device="meta", dtype=torch.float16)
    conds = (
        torch.empty(8, 8, 768, device="meta", dtype=torch.float16),
        torch.empty(8, 128, 1024, device="meta", dtype=torch.float16),
        torch.ones(8, 128, device="meta", dtype=torch.long),
    )
    t = torch.tensor(1, device="meta")
    cases = [
        ("vae_decoder", {"decode_batch_size": 2}, lambda m: (lambda z: decode_latents(vae, z, m), latents, vae)),
        (
            "vae_decoder",
            {"decode_batch_size": 1, "vae_chunk_frames": 256, "vae_overlap_frames": 16},
            lambda m: (lambda z: decode_latents(vae, z, m), latents, vae),
        ),
        (
            "vocoder",
            {"vocoder_chunk_frames": 2000, "vocoder_overlap_frames": 32},
            lambda m: (lambda z: vocode(vocoder, z, m), mel, vocoder),
        ),
        ("denoiser", {"unet_batch_size": 4}, lambda m: (lambda z: predict_noise(unet, z, t, *conds, 4), x, unet)),
    ]
    for stage, memory, make in cases:
        fn, inputs, module = make(memory)
        actual = peak_activation_bytes(fn, inputs, module=module, fused=True)
        planned = tracer(stage, memory)
        assert actual <= planned <= 1.25 * actual, (stage, memory, actual / GIB, planned / GIB)


def test_margin_covers_the_stock_pipelines_measured_peaks(base_150s):
    """The stock pipeline, 4 x 150 s, everything in fp16, measured on an H100: 11.7 GB peak allocated without
    offload and 9.5 GB with model offload. The estimate for the same work must not fall under either, nor be far over
    (read as GiB, the larger of the two readings of GB)."""
    from audioldm2_fast.accel.memory_plan import estimate_peak_bytes

    fp16 = dict.fromkeys(("denoiser", "vae_decoder", "vocoder"), torch.float16)
    work = base_150s(dtypes=fp16)
    half = {k: v // 2 if k in ("vae_decoder", "vocoder") else v for k, v in work.weight_bytes.items()}
    work.weight_bytes = half
    for offload, measured in (("none", 11.7), ("model", 9.5)):
        estimate = estimate_peak_bytes(work, {}, offload) / GIB
        assert measured <= estimate <= 1.2 * measured, (offload, estimate)


def test_smaller_budgets_give_smaller_plans_and_each_fits(base_150s):
    work = base_150s()
    label, settings, offload, estimate = _plan(1000, work)
    assert (label, settings, offload) == ("nothing", {}, "none")
    unconstrained = estimate
    last = unconstrained
    for budget in (16, 8, 6, 4, 3, 2):
        label, settings, offload, estimate = _plan(budget, work)
        assert estimate <= budget, (budget, label, estimate)
        assert estimate <= last
        last = estimate
    # 4 GiB: no offload is needed once the VAE decodes in chunks; the attention chunks are never taken on CUDA,
    # where the fused kernel holds no scores.
    label, settings, offload, _ = _plan(4, work)
    assert offload == "none" and settings.get("vae_chunk_frames") == 256, label
    assert "attention_chunk_size" not in settings


def test_budget_keeps_user_settings_and_skips_refused_offload(base_150s):
    work = base_150s()
    _, settings, _, _ = _plan(2, work, "memory.decode_batch_size=2")
    assert "decode_batch_size" not in settings  # the user's value stays
    label, _, offload, _ = _plan(6, work, allowed=lambda mode: mode != "model")
    assert offload != "model" and "model offload" not in label
    _, _, offload, _ = _plan(0.5, work, on_accelerator=False)
    assert offload == "none"  # no offload without an accelerator
    _, settings, offload, _ = _plan(2, base_150s(fused=False, margin=1.0), on_accelerator=False)
    assert settings["attention_chunk_size"] == 1024  # the math path holds the scores: chunks help there


def test_without_a_budget_nothing_changes_and_a_tiny_budget_takes_every_step_that_helps(make_generator, caplog):
    common = ["prompt=rain", "num_waveforms=2", "audio_length_s=4.0", "steps=2", NO_WRITER]
    plain_gen = make_generator(*common)
    settings = {k: v for k, v in plain_gen.cfg.memory.items() if not k.startswith("_")}  # _target_ names the class
    assert all(v is None for k, v in settings.items() if not k.endswith("_overlap_frames"))
    plain = plain_gen.generate().waveforms
    roomy = make_generator(*common, "memory.budget_gb=100")
    assert np.array_equal(roomy.generate().waveforms, plain)
    with caplog.at_level("INFO", logger="audioldm2_fast.accel.memory_plan"):
        tight = make_generator(*common, "memory.budget_gb=0.001")
    assert tight.cfg.memory.unet_batch_size == 1 and tight.cfg.memory.decode_batch_size == 1
    # 4 s is shorter than one VAE or vocoder chunk and one attention chunk: those steps would change nothing
    assert tight.cfg.memory.vae_chunk_frames is None and tight.cfg.memory.attention_chunk_size is None
    assert tight.cfg.offload.mode == "none"  # on the CPU
    assert "no setting fits" in caplog.text
    out = tight.generate().waveforms
    assert out.shape == plain.shape and np.isfinite(out).all()
