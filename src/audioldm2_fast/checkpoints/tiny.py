"""A small random-weight AudioLDM 2, built entirely offline.

The tiny checkpoint has the same component classes, the same wiring (two cross-attention conditions, CLAP + T5 text
side, GPT-2 prior) and the same time geometry as the published checkpoints (16 kHz audio, 160-sample hop, 64 mel bins,
VAE scale factor 4), only with very few channels and layers. It is written once with ``save_pretrained`` and then
loaded through exactly the same ``from_pretrained`` path as a real checkpoint, so tests exercise the real loader.

Tokenizers are built in code too: a byte-level BPE with no merges for CLAP (RoBERTa) and a small unigram vocabulary
for Flan-T5. Any text can be tokenized; the token ids simply carry no meaning.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

from .tokenizers import CAPTION_WORDS, WORD, roberta_tokenizer, unigram_t5_tokenizer

# Bump when the architecture or the init below changes, so old caches are not reused.
TINY_FORMAT_VERSION = 1

# Scheduler values of the published checkpoints (cvssp/audioldm2 scheduler_config.json).
_SCHEDULER_CONFIG = {
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _t5_tokenizer(model_max_length: int):
    """Caption words, then every ASCII letter, digit and punctuation mark with and without the word marker."""
    pieces = [(WORD + w, -5.0) for w in CAPTION_WORDS]
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        pieces += [(WORD + ch, -9.0), (ch, -10.0)]
    return unigram_t5_tokenizer(model_max_length, pieces)


def build_tiny_components(seed: int = 0, language_model_class: str = "GPT2Model") -> dict:
    """Return the components of a tiny AudioLDM 2 as an ``AudioLDM2Pipeline`` expects them."""
    # The model libraries only when the checkpoint is built (once per cache): resolving a cached one imports none.
    import torch
    from diffusers import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Model,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    if language_model_class not in ("GPT2Model", "GPT2LMHeadModel"):
        raise ValueError(f"language_model_class must be GPT2Model or GPT2LMHeadModel, got {language_model_class!r}")

    tokenizer = roberta_tokenizer(model_max_length=77)
    tokenizer_2 = _t5_tokenizer(model_max_length=77)
    clap_dim, t5_dim, gpt2_dim = 16, 32, 16

    torch.manual_seed(seed)
    text_config = ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=80,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        projection_dim=clap_dim,
    )
    audio_config = ClapAudioConfig(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        intermediate_size=37,
        depths=[2, 2],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        hidden_size=32,
        patch_embeds_hidden_size=16,
        projection_dim=clap_dim,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
    )
    text_encoder = ClapModel(
        ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(), projection_dim=clap_dim)
    )
    # hop 7900 keeps the 10 s CLAP window at 61 frames, which fits the tiny 64x64 spectrogram patching.
    feature_extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=48000, hop_length=7900, max_length_s=10, fft_window_size=1024
    )

    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_2), d_model=t5_dim, d_ff=37, d_kv=8, num_heads=2, num_layers=2)
    )

    torch.manual_seed(seed + 2)
    lm_config = GPT2Config(
        n_embd=gpt2_dim, n_head=2, n_layer=2, vocab_size=64, n_positions=128, bos_token_id=0, eos_token_id=0
    )
    lm_config.max_new_tokens = 8
    language_model = (GPT2Model if language_model_class == "GPT2Model" else GPT2LMHeadModel)(lm_config)

    torch.manual_seed(seed + 3)
    projection_model = AudioLDM2ProjectionModel(
        text_encoder_dim=clap_dim, text_encoder_1_dim=t5_dim, langauge_model_dim=gpt2_dim
    )

    torch.manual_seed(seed + 4)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=64,
        in_channels=8,
        out_channels=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, gpt2_dim, t5_dim], [None, gpt2_dim, t5_dim]),
    )

    torch.manual_seed(seed + 5)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=8,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.4110932946205139,
        force_upcast=True,
    )

    torch.manual_seed(seed + 6)
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=32,
            upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[10, 8, 4, 4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
            # The stock init (0.01) through five upsampling stages gives ~1e-10 audio; 0.2 gives unit-scale audio,
            # so that absolute tolerances in the parity tests mean something.
            initializer_range=0.2,
        )
    )

    scheduler = DDIMScheduler(**_SCHEDULER_CONFIG)

    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "projection_model": projection_model,
        "language_model": language_model,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "feature_extractor": feature_extractor,
        "unet": unet,
        "scheduler": scheduler,
        "vocoder": vocoder,
    }


def default_cache_root() -> Path:
    """Where built checkpoints live: ``$AUDIOLDM2_FAST_CACHE`` or ``$XDG_CACHE_HOME/audioldm2-fast``."""
    if os.environ.get("AUDIOLDM2_FAST_CACHE"):
        return Path(os.environ["AUDIOLDM2_FAST_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "audioldm2-fast"


def tiny_checkpoint_dir(
    seed: int = 0, language_model_class: str = "GPT2Model", cache_dir: str | os.PathLike | None = None
) -> Path:
    """Build the tiny checkpoint once (atomically) and return its diffusers-format directory."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    target = root / f"tiny-v{TINY_FORMAT_VERSION}-seed{seed}-{language_model_class.lower()}"
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    from diffusers import AudioLDM2Pipeline

    components = build_tiny_components(seed=seed, language_model_class=language_model_class)
    # Build next to the target and rename, so that concurrent jobs never see a half-written checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
    try:
        AudioLDM2Pipeline(**components).save_pretrained(tmp, safe_serialization=True)
        _record_provenance(tmp, seed, language_model_class)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _record_provenance(path: Path, seed: int, language_model_class: str) -> None:
    info = {"builder": "audioldm2_fast.tiny", "version": TINY_FORMAT_VERSION, "seed": seed}
    info["language_model_class"] = language_model_class
    (path / "tiny_checkpoint.json").write_text(json.dumps(info, indent=2) + "\n")
