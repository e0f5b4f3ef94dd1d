"""Synthetic full-size checkpoints: the published architectures with random weights, built in memory.

``checkpoint=synthetic-audioldm2`` (and ``-large``, ``-music``) reads the published config JSON files packaged in
``checkpoints/configs/<name>/`` and builds every component from them with random weights, directly on the device
and in the dtype of the stage that asks for it. Nothing is downloaded or written to disk; the audio is noise, but
shapes, parameter counts, FLOPs and memory are those of the real checkpoints, so it serves for benchmarks, memory
planning and compile / offload tests on any machine.

Random weights
    Each component is built under its own fixed seed (derived from ``seed`` and the component name), inside
    ``torch.random.fork_rng`` so the caller's RNG state is untouched. The same seed gives the same weights on the
    same device type; the CPU and CUDA generators draw different numbers. Modules are constructed in float32 under
    ``with torch.device(device):`` and then cast to the requested dtype (on ``meta`` nothing is materialised), so
    the weights in fp16/bf16 are the fp32 draws rounded. The CLAP config says ``torch_dtype: float64``; that key
    is ignored, the requested dtype is always used.

Tokenizers
    Built in code at the real vocabulary sizes, once per process: a byte-level BPE without merges for CLAP
    (RoBERTa, 50,265 tokens, ``model_max_length`` 512) and a unigram vocabulary for Flan-T5 (32,000 pieces + 100
    ``<extra_id_N>``, ``model_max_length`` 128): common audio-caption words, single characters with and without
    the ``▁`` word prefix, and 2- and 3-letter pieces, so that prompts get token counts near the real ones (14 for
    the samba prompt of the benchmarks; Flan-T5 gives ~16). Any text tokenizes (characters outside ASCII become
    byte symbols for CLAP and ``<unk>`` for T5); the ids carry no meaning.

fp16 and init scaling (``init_scale``)
    The stock initialisers of diffusers / transformers are kept for every component but the vocoder, and the chain
    stays finite in fp16 with a wide margin. Measured in real fp16 on a CPU (CLAP text 2 x 512 tokens, T5 2 x 16,
    GPT-2 8 new tokens, UNet step on (2, 8, 32, 16), VAE decode, vocoder on 128 frames), largest |output| of the
    stage / of any submodule: CLAP text 0.14 / 4.8, T5 4.0 / 20, projection + GPT-2 3.3 / 4.3, UNet 1.4 / 5.5,
    VAE 1.6 / 7.8, vocoder 0.86 / 2.1. A whole fp16 run (25 DDIM or 20 DPM++ steps, guidance 3.5) drives the
    latents to |x| ~ 250 (random weights do not predict the noise), so the largest submodule outputs become
    UNet ~150 (large ~130) and VAE ~315, still 200x under the fp16 limit of 65504. The full 10.24 s shapes
    (fp32 compute with every op output rounded to fp16) give the same picture: VAE peak ~680, no overflow.

    The vocoder is the exception: with its stock init (N(0, initializer_range 0.01) for every conv) conv_pre, the
    five upsampling layers and conv_post each shrink the signal 2.5-14x, so the audio comes out at ~1e-6 (RMS
    1.9e-6; subnormal in fp16). ``vocoder_unit_gain`` rescales exactly those seven layers to unit gain (factors 4.7,
    2.5, 3.1, 4.4, 8.8, 12.4, 9.4 for the published config) and leaves the residual blocks at the stock init; the
    audio then has the scale of the mel it is given (RMS ~0.3 for the random VAE's mel, |x| <= 1 after the final
    tanh). Scaling everything by one factor instead does not work: the residual blocks blow up (x5 overflows
    fp16) before the audio reaches a useful level.

    ``init_scale`` overrides this per component: ``{component: {module name prefix: factor}}``. After
    construction, the weights and biases of every Linear / Conv / ConvTranspose submodule whose qualified name is
    the prefix or starts with ``prefix + "."`` (``""`` = all) are multiplied by ``factor``. A component named in
    ``init_scale`` gets only the factors given there: ``{"vocoder": {}}`` restores the stock vocoder init.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import string
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..runtime.errors import CheckpointError
from .resolve import SYNTHETIC_PREFIX
from .store import ALLOWED_CLASSES, PROCESSORS, ComponentStore, _import_class
from .tokenizers import CAPTION_WORDS, T5_SPECIALS, WORD, roberta_tokenizer, unigram_t5_tokenizer


def vocoder_unit_gain(cfg: Mapping[str, Any]) -> dict[str, float]:
    """Factors that give HiFi-GAN's ``conv_pre``, each ``upsampler.i`` and ``conv_post`` unit gain.

    The stock init draws every conv weight from N(0, initializer_range); a layer then scales the RMS of its input by
    ``initializer_range * sqrt(g * fan_in)``, where ``fan_in`` is input channels x kernel (divided by the stride for
    the transposed convs) and ``g`` = (1 + slope^2) / 2 is the mean square of a leaky ReLU of a unit Gaussian. The
    factor is the inverse of that gain. The residual blocks keep the stock init: their branches are small and their
    skip paths carry the signal at unit gain.
    """
    std = float(cfg.get("initializer_range") or 0.01)
    slope = float(cfg.get("leaky_relu_slope", 0.1))
    channels = int(cfg["upsample_initial_channel"])
    factors = {"conv_pre": 1.0 / (std * math.sqrt(int(cfg["model_in_dim"]) * 7))}
    for i, (rate, kernel) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"], strict=True)):
        fan_in = (channels // 2**i) * int(kernel) / int(rate)
        factors[f"upsampler.{i}"] = 1.0 / (std * math.sqrt((1 + slope**2) / 2 * fan_in))
    last = channels // 2 ** len(cfg["upsample_rates"])
    factors["conv_post"] = 1.0 / (std * math.sqrt((1 + 0.01**2) / 2 * last * 7))  # F.leaky_relu default slope
    return factors


def default_init_scale(name: str, cfg: Mapping[str, Any]) -> dict[str, float]:
    """The init scaling applied to component ``name`` unless ``init_scale`` names it (see the module docstring)."""
    if name == "vocoder":
        return vocoder_unit_gain(cfg)
    return {}


# Config keys that must not steer construction: the requested dtype always wins.
_DTYPE_KEYS = ("torch_dtype", "dtype")


def component_seed(seed: int, name: str) -> int:
    """A fixed, independent seed per component."""
    return zlib.crc32(f"{int(seed)}:{name}".encode())


# ----------------------------------------------------------------------------------------------------------- tokenizers


@functools.lru_cache(maxsize=4)
def t5_tokenizer(model_max_length: int = 128):
    """Flan-T5's tokenizer at its real size: 32,000 unigram pieces + 100 ``<extra_id_N>`` = 32,100 ids.

    Pieces, best score first: whole words for common audio-caption words (so the usual prompts get about their real
    token counts), every printable ASCII character with and without the ``▁`` word prefix (so any ASCII text
    tokenizes without ``<unk>``), then lowercase 2- and 3-letter pieces up to 32,000 (other words take ~2-3 pieces).
    """

    def pieces():
        for word in CAPTION_WORDS:
            yield WORD + word, -8.0
            yield WORD + word.capitalize(), -8.0
        for code in range(33, 127):  # printable ASCII except the space
            yield WORD + chr(code), -12.0
            yield chr(code), -12.0
        for n in (2, 3):
            for prefix in (WORD, ""):
                for letters in itertools.product(string.ascii_lowercase, repeat=n):
                    yield prefix + "".join(letters), -10.0

    seen = {piece for piece, _ in T5_SPECIALS}
    vocab = []
    for piece, score in pieces():
        if piece not in seen and len(vocab) < 32000 - len(T5_SPECIALS):  # each piece once, its first score kept
            seen.add(piece)
            vocab.append((piece, score))
    return unigram_t5_tokenizer(model_max_length, vocab, extra_ids=100)


# ----------------------------------------------------------------------------------------------------------- the store


class SyntheticComponentStore(ComponentStore):
    """Components of a published AudioLDM 2 architecture with random weights, built on first use.

    ``path`` is a packaged config directory (``synthetic_config_dir(...)``); ``index``, ``config(name)`` and
    ``class_name(name)`` behave as for a checkpoint on disk.
    """

    def __init__(
        self,
        path: Path,
        seed: int = 0,
        init_scale: Mapping[str, Mapping[str, float]] | None = None,
    ):
        super().__init__(path)
        self.seed = int(seed)
        # Overrides per component; a component not named here gets default_init_scale().
        self.init_scale: dict[str, dict[str, float]] = {
            str(component): {str(k): float(v) for k, v in dict(factors or {}).items()}
            for component, factors in (init_scale or {}).items()
        }

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Any:
        """Return component ``name``, built on first use in ``dtype`` directly on ``device`` (default CPU)."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name, dtype, device)
        return self._loaded[name]

    def _load(self, name: str, dtype: torch.dtype | None, device: torch.device | str | None = None) -> Any:
        library, class_name = self.index.get(name, [None, None])
        if class_name is None:
            raise CheckpointError(f"checkpoint {self.path}: component {name!r} is missing from model_index.json")
        is_scheduler = library == "diffusers" and str(class_name).endswith("Scheduler")
        if not is_scheduler and class_name not in ALLOWED_CLASSES.get(str(library), set()):
            raise CheckpointError(
                f"checkpoint {self.path}: component {name!r} names {library}.{class_name}, "
                "which is not a class an AudioLDM 2 checkpoint is made of"
            )
        if name == "tokenizer":
            limit = int(self._tokenizer_config(name).get("model_max_length") or 512)
            return roberta_tokenizer(limit, 50265, words=CAPTION_WORDS)
        if name == "tokenizer_2":
            return t5_tokenizer(int(self._tokenizer_config(name).get("model_max_length") or 128))
        cfg = {k: v for k, v in self.config(name).items() if k not in _DTYPE_KEYS}
        if is_scheduler:
            return _import_class(library, class_name).from_config(cfg)
        cls = _import_class(library, class_name)
        if name in PROCESSORS:  # feature_extractor
            return cls(**cfg)
        return self._build_module(name, library, cls, cfg, dtype or torch.float32, torch.device(device or "cpu"))

    def meta(self, name: str, dtype: torch.dtype) -> torch.nn.Module | None:
        library, class_name = self.index.get(name, [None, None])
        if name in PROCESSORS or str(class_name).endswith("Scheduler") or class_name is None:
            return None
        cfg = {k: v for k, v in self.config(name).items() if k not in _DTYPE_KEYS}
        cls = _import_class(str(library), str(class_name))
        return self._build_module(name, str(library), cls, cfg, dtype, torch.device("meta"))

    def _tokenizer_config(self, name: str) -> dict[str, Any]:
        file = self.path / name / "tokenizer_config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def _build_module(
        self, name: str, library: str, cls: type, cfg: dict[str, Any], dtype: torch.dtype, device: torch.device
    ) -> torch.nn.Module:
        # Seed inside fork_rng (every CUDA device, as manual_seed reseeds them all): the caller's CPU and CUDA RNG
        # streams are left as they were.
        # Other accelerators (mps, ...) are reseeded without being restored.
        fork_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), torch.device(device):
            torch.manual_seed(component_seed(self.seed, name))
            if library == "transformers":
                config = cls.config_class(**cfg)
                if name == "language_model":
                    config.max_new_tokens = int(cfg.get("max_new_tokens") or 8)
                module = cls(config)
            else:
                module = cls.from_config(cfg)
        if device.type != "meta":
            factors = self.init_scale[name] if name in self.init_scale else default_init_scale(name, cfg)
            scale_init(module, factors)
        if dtype != torch.float32:
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast (about an empty fp32-module list).
            torch.nn.Module.to(module, dtype=dtype)
        return module.eval()


@torch.no_grad()
def scale_init(module: torch.nn.Module, factors: Mapping[str, float]) -> None:
    """Multiply the weights and biases of the Conv/Linear submodules under each name prefix by its factor."""
    layer_types = (
        torch.nn.Linear,
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
    )
    for prefix, factor in factors.items():
        if factor == 1.0:
            continue
        for qualified, sub in module.named_modules():
            if isinstance(sub, layer_types) and (
                not prefix or qualified == prefix or qualified.startswith(prefix + ".")
            ):
                for param in (sub.weight, sub.bias):
                    if param is not None:
                        param.mul_(factor)


def make_store(ckpt_cfg: Any, path: Path) -> ComponentStore:
    """The component store for a resolved checkpoint: synthetic names build in memory, others load from ``path``."""
    name = str(ckpt_cfg.get("name") or "")
    if name.startswith(SYNTHETIC_PREFIX):
        syn = ckpt_cfg.get("synthetic") or {}
        init_scale = syn.get("init_scale")
        if init_scale is not None and hasattr(init_scale, "items"):
            init_scale = {str(k): dict(v or {}) for k, v in init_scale.items()}
        return SyntheticComponentStore(path, seed=int(syn.get("seed", 0) or 0), init_scale=init_scale)
    return ComponentStore(path, allow_pickle=bool(ckpt_cfg.get("allow_pickle", False)))
