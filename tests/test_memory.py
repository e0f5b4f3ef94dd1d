"""Long audio in bounded memory: exact sub-batching and chunking, approximate VAE chunking, OOM messages, RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audioldm2_fast.chunking import chunked_along_time, time_chunks
from audioldm2_fast.config import validate_config
from audioldm2_fast.errors import ConfigError
from audioldm2_fast.runner import compose_config

TESTS = Path(__file__).resolve().parent
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
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
        "from audioldm2_fast.runner import compose_config, Generator\n"
        "def status(key):\n"
        "    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "g = Generator(compose_config(sys.argv[1:]))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        "g.generate()\n"
        "print((status('VmHWM') - before) / 1024)\n"
    )
    args = ["checkpoint=tiny", "prompt=rain", "steps=2", "progress=false", NO_WRITER, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
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


def _work(**overrides):
    from audioldm2_fast.budget import Workload

    base = dict(  # the published base model, 4 x 150 s with guidance, fp16 on CUDA
        unet_rows=8,
        waveforms=4,
        latent_tokens=3750 * 16,
        unet_channels=128,
        attention_heads=8,
        mel_frames=15000,
        mel_bins=64,
        vae_channels=128,
        vae_factor=4,
        hop=160,
        vocoder_channels=32,
        dtype_bytes={"denoiser": 2, "vae_decoder": 4, "vocoder": 4},
        weight_bytes={
            "text_encoders": 1_200_000_000,
            "prior": 700_000_000,
            "denoiser": 700_000_000,
            "vae_decoder": 200_000_000,
            "vocoder": 220_000_000,
        },
        kernel_attention=True,
    )
    return Workload(**{**base, **overrides})


def _plan(budget, *overrides, work=None, on_accelerator=True, allowed=None):
    from audioldm2_fast.budget import plan_memory

    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"memory.budget_gb={budget}", *overrides])
    return plan_memory(cfg, work or _work(), on_accelerator, allowed)


def test_smaller_budgets_take_more_of_the_ladder_and_each_fits():
    chosen = []
    for budget in (1000, 24, 12, 8, 4, 2):
        label, settings, offload, estimate = _plan(budget)
        chosen.append((label, offload))
        if label != "sequential offload":
            assert estimate <= budget
    labels = [c[0] for c in chosen]
    assert labels[0] == "nothing" and chosen[0][1] == "none"
    order = [
        "nothing",
        "decoder one waveform at a time",
        "guidance halves one after the other",
        "one waveform per UNet call",
        "vocoder and attention in chunks",
        "model offload",
        "VAE decoder in chunks (approximate)",
        "sequential offload",
    ]
    ranks = [order.index(label) for label in labels]
    assert ranks == sorted(ranks) and len(set(ranks)) > 3  # monotone, and the budgets really differ


def test_budget_keeps_user_settings_and_skips_refused_offload():
    _, settings, _, _ = _plan(2, "memory.decode_batch_size=2")
    assert "decode_batch_size" not in settings  # the user's value stays
    label, _, offload, _ = _plan(3, allowed=lambda mode: mode != "model")
    assert offload != "model" and label != "model offload"
    _, _, offload, _ = _plan(0.5, on_accelerator=False)
    assert offload == "none"  # no offload without an accelerator


def test_without_a_budget_nothing_changes_and_a_tiny_budget_plans_everything(make_generator, caplog):
    common = ["prompt=rain", "num_waveforms=2", "audio_length_s=4.0", "steps=2", NO_WRITER]
    plain_gen = make_generator(*common)
    assert all(v is None for k, v in plain_gen.cfg.memory.items() if not k.endswith("_overlap_frames"))
    plain = plain_gen.generate().waveforms
    roomy = make_generator(*common, "memory.budget_gb=100")
    assert np.array_equal(roomy.generate().waveforms, plain)
    with caplog.at_level("INFO", logger="audioldm2_fast.budget"):
        tight = make_generator(*common, "memory.budget_gb=0.001")
    assert tight.cfg.memory.unet_batch_size == 1 and tight.cfg.memory.vae_chunk_frames == 256
    assert tight.cfg.offload.mode == "none"  # on the CPU
    assert "no setting fits" in caplog.text
    out = tight.generate().waveforms
    assert out.shape == plain.shape and np.isfinite(out).all()
