"""Synthetic full-size checkpoints: published architectures, random weights, built in memory."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from audioldm2_fast.checkpoints.resolve import synthetic_config_dir
from audioldm2_fast.checkpoints.synthetic import SyntheticComponentStore, make_store
from audioldm2_fast.config.schema import SYNTHETIC_CONFIGS

MODULES = ("unet", "vae", "vocoder", "text_encoder", "text_encoder_2", "language_model", "projection_model")
BASE_TOTAL = 1_118_354_316
EXPECTED = {
    "audioldm2": {"unet": 346_943_496, "total": BASE_TOTAL},
    "audioldm2-large": {"unet": 718_012_296, "total": 1_489_423_116},
    # The packaged music configs are byte-identical to the base ones (checked below): same architecture, same sizes.
    "audioldm2-music": {"unet": 346_943_496, "total": BASE_TOTAL},
}
# fp16 overflows at 65504; the largest module output measured at these shapes is ~20 (T5), so this leaves headroom.
FP16_HEADROOM = 1e4


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _json_files(config: str) -> dict[str, object]:
    root = synthetic_config_dir(config)
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


# ------------------------------------------------------------------------------------------------------ architectures


def test_packaged_configs_are_complete():
    expected = {
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "vocoder/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "language_model/config.json",
        "projection_model/config.json",
        "scheduler/scheduler_config.json",
        "feature_extractor/preprocessor_config.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/special_tokens_map.json",
    }
    for config in SYNTHETIC_CONFIGS:
        assert set(_json_files(config)) == expected, config
    assert _json_files("audioldm2-music") == _json_files("audioldm2")
    base, large = _json_files("audioldm2"), _json_files("audioldm2-large")
    assert [k for k in base if base[k] != large[k]] == ["unet/config.json"]


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS)
def test_parameter_counts_on_meta(config):
    store = SyntheticComponentStore(synthetic_config_dir(config))
    counts = {}
    for name in MODULES:
        module = store.get(name, torch.float16, "meta")
        assert all(p.is_meta for p in module.parameters()), name
        assert next(module.parameters()).dtype == torch.float16, name
        assert not module.training, name
        counts[name] = _n_params(module)
    assert counts["unet"] == EXPECTED[config]["unet"]
    assert sum(counts.values()) == EXPECTED[config]["total"]
    assert store.get("language_model").config.max_new_tokens == 8
    assert type(store.get("scheduler")).__name__ == "DDIMScheduler"
    assert store.get("feature_extractor").sampling_rate == 48000


def test_config_resolves_to_the_packaged_dir_and_a_synthetic_store():
    from audioldm2_fast.checkpoints.resolve import resolve_checkpoint
    from audioldm2_fast.checkpoints.store import ComponentStore
    from audioldm2_fast.config.compose import compose_config

    for config in SYNTHETIC_CONFIGS:
        cfg = compose_config([f"checkpoint=synthetic-{config}", "checkpoint.synthetic.seed=3"])
        path = resolve_checkpoint(cfg.checkpoint)
        assert path == synthetic_config_dir(config)
        store = make_store(cfg.checkpoint, path)
        assert isinstance(store, SyntheticComponentStore) and store.seed == 3
        assert store.config("vocoder")["sampling_rate"] == 16000
    assert type(make_store(compose_config(["checkpoint=local"]).checkpoint, path)) is ComponentStore


def test_disk_store_accepts_and_ignores_a_device(tiny_dir):
    from audioldm2_fast.checkpoints.store import ComponentStore

    module = ComponentStore(tiny_dir).get("projection_model", torch.float16, "meta")
    assert next(module.parameters()).device.type == "cpu"  # disk checkpoints always load on the CPU


# ---------------------------------------------------------------------------------------------------------- tokenizers


def test_tokenizers_have_the_real_vocabulary_sizes():
    store = SyntheticComponentStore(synthetic_config_dir("audioldm2"))
    clap, t5 = store.get("tokenizer"), store.get("tokenizer_2")
    assert len(clap) == 50265 and clap.model_max_length == 512
    assert (clap.bos_token_id, clap.pad_token_id, clap.eos_token_id, clap.unk_token_id) == (0, 1, 2, 3)
    assert clap.mask_token_id == 50264
    assert len(t5) == 32100 and t5.model_max_length == 128
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) != [t5.unk_token_id] * 2
    # Built once per process.
    assert SyntheticComponentStore(synthetic_config_dir("audioldm2-large")).get("tokenizer") is clap

    texts = ["The sound of Brazilian samba drums 🥁🌊 with waves!", "", "naïve café — 中文 ~`|\\{}", "a" * 2000]
    ids = clap(texts, padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (4, 512) and int(ids.max()) < 50265
    assert int(ids[0, 0]) == 0 and not (ids[0, 1:20] == clap.unk_token_id).any()  # byte-level: no unknowns
    enc = t5(texts, padding=True, max_length=128, truncation=True, return_tensors="pt").input_ids
    assert enc.shape[0] == 4 and enc.shape[1] <= 128 and int(enc.max()) < 32100
    plain = t5("Rain on a tin roof, 2 dogs barking!").input_ids
    assert plain[-1] == t5.eos_token_id and t5.unk_token_id not in plain  # any ASCII text has pieces


# -------------------------------------------------------------------------------------------------------- determinism


def test_build_is_deterministic_per_seed_and_leaves_the_rng_alone():
    def weights(seed):
        store = SyntheticComponentStore(synthetic_config_dir("audioldm2"), seed=seed)
        return store.get("projection_model", torch.float32, "cpu").state_dict()

    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = weights(0)
    assert torch.equal(torch.rand(3), expected_draw)
    b, c = weights(0), weights(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projection.weight"], c["projection.weight"])


def test_init_scale_option():
    config = synthetic_config_dir("audioldm2")
    default = SyntheticComponentStore(config).get("vocoder")
    stock = SyntheticComponentStore(config, init_scale={"vocoder": {}}).get("vocoder")
    doubled = SyntheticComponentStore(config, init_scale={"vocoder": {"upsampler.4": 2.0}}).get("vocoder")
    assert 0.005 < float(stock.upsampler[4].weight.std()) < 0.015  # initializer_range 0.01
    # The default gives upsampler.4 unit gain: factor ~12.
    assert float(default.upsampler[4].weight.std()) > 5 * float(stock.upsampler[4].weight.std())
    assert torch.equal(doubled.upsampler[4].weight, 2 * stock.upsampler[4].weight)
    assert torch.equal(doubled.upsampler[3].weight, stock.upsampler[3].weight)
    assert torch.equal(doubled.resblocks[0].convs1[0].weight, default.resblocks[0].convs1[0].weight)


# ------------------------------------------------------------------------------------------------ fp16 on the CPU


@contextmanager
def _watch(module: torch.nn.Module):
    """Record the largest |output| of any submodule and the first submodule whose output is not finite."""
    seen = {"peak": 0.0, "where": None, "nonfinite": None}
    names = {m: n for n, m in module.named_modules()}

    def hook(mod, args, out):
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            peak = float(out.detach().abs().max())
            if not peak < float("inf"):  # inf or nan
                seen["nonfinite"] = seen["nonfinite"] or names[mod]
            elif peak > seen["peak"]:
                seen["peak"], seen["where"] = peak, names[mod]

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _assert_fp16_safe(seen, out, what):
    assert seen["nonfinite"] is None, f"{what}: non-finite output in {seen['nonfinite']}"
    assert torch.isfinite(out).all(), what
    assert seen["peak"] < FP16_HEADROOM, f"{what}: |x| reaches {seen['peak']:.3g} in {seen['where']}"


@pytest.fixture(scope="module")
def fp16_store():
    store = SyntheticComponentStore(synthetic_config_dir("audioldm2"), seed=0)
    for name in ("unet", "vae"):
        # fp16 convolutions on a CPU are only fast in channels_last (same numerics).
        store.get(name, torch.float16, "cpu").to(memory_format=torch.channels_last)
    return store


@pytest.mark.slow
@torch.no_grad()
def test_full_chain_is_finite_in_fp16(fp16_store):
    from audioldm2_fast.stages.prior import generate_hidden_states

    store, dt = fp16_store, torch.float16
    get = lambda name: store.get(name, dt, "cpu")  # noqa: E731
    prompts = ["Low quality.", "Samba drums and waves 🥁"]
    clap_tok, t5_tok = get("tokenizer"), get("tokenizer_2")

    # CLAP text branch, padded to 512 tokens as the pipeline does.
    clap_in = clap_tok(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with _watch(get("text_encoder")) as seen:
        feats = get("text_encoder").get_text_features(clap_in.input_ids, attention_mask=clap_in.attention_mask)
        feats = getattr(feats, "pooler_output", feats)
    assert feats.dtype == dt and feats.shape == (2, 512)
    _assert_fp16_safe(seen, feats, "CLAP text")

    t5_in = t5_tok(prompts, padding=True, return_tensors="pt")
    with _watch(get("text_encoder_2")) as seen:
        t5 = get("text_encoder_2")(t5_in.input_ids, attention_mask=t5_in.attention_mask)[0]
    _assert_fp16_safe(seen, t5, "T5")

    with _watch(get("projection_model")) as seen_p, _watch(get("language_model")) as seen_lm:
        proj = get("projection_model")(
            hidden_states=feats[:, None, :],
            hidden_states_1=t5,
            attention_mask=torch.ones(2, 1, dtype=torch.long),
            attention_mask_1=t5_in.attention_mask,
        )
        generated = generate_hidden_states(get("language_model"), proj.hidden_states, proj.attention_mask, 8)
    assert generated.shape == (2, 8, 768)
    _assert_fp16_safe(seen_p, proj.hidden_states, "projection")
    _assert_fp16_safe(seen_lm, generated, "GPT-2 prior")

    latents = torch.randn(2, 8, 32, 16, generator=torch.Generator().manual_seed(0)).to(dt)
    with _watch(get("unet")) as seen:
        eps = get("unet")(
            latents,
            torch.tensor(981),
            encoder_hidden_states=generated,
            encoder_hidden_states_1=t5,
            encoder_attention_mask_1=t5_in.attention_mask,
            return_dict=False,
        )[0]
    assert eps.shape == latents.shape
    _assert_fp16_safe(seen, eps, "UNet step")

    # Latents after a whole random-weight denoising loop reach |x| ~ 250 (measured, 25 DDIM steps with guidance):
    # decode at that scale.
    vae = get("vae")
    with _watch(vae) as seen:
        mel = vae.decode(64 * latents[:1] / vae.config.scaling_factor).sample
    assert mel.shape == (1, 1, 128, 64)
    _assert_fp16_safe(seen, mel, "VAE decode")

    with _watch(get("vocoder")) as seen:
        audio = get("vocoder")(mel[:, 0, :32])  # 32 frames: fp16 conv1d is slow on a CPU
    assert audio.shape[0] == 1 and audio.shape[1] >= 32 * 160
    _assert_fp16_safe(seen, audio, "vocoder")
    rms = float(audio.float().pow(2).mean().sqrt())
    assert 0.05 < rms < 0.9, f"audio RMS {rms:.3g}"


@pytest.mark.slow
@torch.no_grad()
def test_large_unet_step_is_finite_in_fp16():
    store = SyntheticComponentStore(synthetic_config_dir("audioldm2-large"), seed=0)
    unet = store.get("unet", torch.float16, "cpu").to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 8, 32, 16, generator=gen).to(torch.float16)
    cond = torch.randn(2, 8, 768, generator=gen).to(torch.float16)
    cond_1 = torch.randn(2, 12, 1024, generator=gen).to(torch.float16)
    with _watch(unet) as seen:
        eps = unet(
            latents,
            torch.tensor(981),
            encoder_hidden_states=cond,
            encoder_hidden_states_1=cond_1,
            encoder_attention_mask_1=torch.ones(2, 12, dtype=torch.long),
            return_dict=False,
        )[0]
    _assert_fp16_safe(seen, eps, "large UNet step")
