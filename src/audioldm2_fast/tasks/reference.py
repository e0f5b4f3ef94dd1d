"""The stock diffusers ``AudioLDM2Pipeline``, built from the Generator's own components, as a same-process reference.

It is configured as the founding recipe does it: every component in one dtype on one device, SDPA attention, and,
when our run compiles its denoiser or captures it as CUDA graphs (or ``benchmark.reference_compile`` says so),
``torch.compile(unet, mode="reduce-overhead", fullgraph=True)``. Modules whose
dtype or device differs from that (our default keeps the VAE decoder and vocoder in fp32) are copied for the
reference; all others are shared, so both sides run the very same weights.

The published checkpoints ship ``GPT2Model``, on which the stock pipeline fails under transformers 5 (it calls
generation helpers that only ``GPT2LMHeadModel`` has). The reference then wraps the same GPT-2 weights in a
``GPT2LMHeadModel`` whose LM head is tied to the input embeddings; ``note`` says so.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import AudioLDM2Pipeline
from transformers import GPT2LMHeadModel

from ..accel.compile import effective_mode
from ..accel.graphs import captures_on
from ..stages.schedulers import build_scheduler

if TYPE_CHECKING:
    from ..generator import Generator

COMPONENTS = (
    "vae",
    "text_encoder",
    "text_encoder_2",
    "projection_model",
    "language_model",
    "tokenizer",
    "tokenizer_2",
    "feature_extractor",
    "unet",
    "vocoder",
)


def stock_compiles(cfg: Any, device_type: str) -> bool:
    """Whether the stock side's UNet is compiled (``benchmark.reference_compile``): ``auto`` compiles it as the
    founding recipe does whenever our denoiser is compiled, or captured as graphs on CUDA."""
    choice = str((cfg.get("benchmark") or {}).get("reference_compile", "auto"))
    if choice != "auto":
        return choice == "reduce-overhead"
    compiled = effective_mode(str(cfg.compile.mode), device_type) != "none" and "denoiser" in cfg.compile.stages
    graphs = cfg.get("graphs") or {}
    captured = captures_on(str(graphs.get("mode", "none")), device_type) and "denoiser" in (graphs.get("stages") or [])
    return compiled or captured


def _original(module: Any) -> Any:
    """The module behind a ``torch.compile`` wrapper (and behind compiled submodules of the VAE/CLAP)."""
    return getattr(module, "_orig_mod", module)


def _wrap_gpt2(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, GPT2LMHeadModel):
        return model
    with torch.device("meta"):
        wrapped = GPT2LMHeadModel(model.config)
    wrapped.transformer = model
    wrapped.lm_head.weight = model.wte.weight
    return wrapped.eval()


class DiffusersReference:
    def __init__(self, generator: Generator):
        cfg = generator.cfg
        denoiser = next(s for s in generator.stages if s.name == "denoiser")
        self.device, self.dtype = denoiser.device, denoiser.dtype
        store = generator.store
        self.notes: list[str] = []
        parts: dict[str, Any] = {}
        for name in COMPONENTS:
            part = _original(store.get(name))
            if isinstance(part, torch.nn.Module):
                part = self._unwrap_submodules(part)
                param = next(part.parameters())
                if param.dtype != self.dtype or param.device != self.device:
                    part = copy.deepcopy(part).to(device=self.device, dtype=self.dtype)
                    self.notes.append(f"{name} copied to {str(self.dtype).removeprefix('torch.')}")
            parts[name] = part
        if type(parts["language_model"]).__name__ == "GPT2Model":
            parts["language_model"] = _wrap_gpt2(parts["language_model"])
            self.notes.append("GPT2Model wrapped in GPT2LMHeadModel (same weights) so the stock pipeline can run")
        parts["scheduler"] = build_scheduler(cfg.scheduler, store.config("scheduler"))
        self.pipe = AudioLDM2Pipeline(**parts)
        self.pipe.set_progress_bar_config(disable=True)
        # Keep generation order (the stock scorer re-ranks across the batch when librosa is installed), so that
        # outputs compare one to one; ranking is not part of the reference's time.
        self.pipe.score_waveforms = lambda text, audio, num_waveforms_per_prompt, device, dtype: audio
        if stock_compiles(cfg, self.device.type):
            self.pipe.unet = torch.compile(self.pipe.unet, mode="reduce-overhead", fullgraph=True)
            self.notes.append('unet compiled with torch.compile(mode="reduce-overhead", fullgraph=True)')
        self.cfg = cfg

    @staticmethod
    def _unwrap_submodules(module: torch.nn.Module) -> torch.nn.Module:
        """Our compile replaces some submodules in place (VAE decoder, CLAP text model); the stock side runs eager."""
        compiled = {
            name: child
            for name, child in module.named_children()
            if isinstance(child, torch._dynamo.eval_frame.OptimizedModule)
        }
        if not compiled:
            return module
        clone = copy.copy(module)
        clone._modules = dict(module._modules)
        for name, child in compiled.items():
            clone._modules[name] = child._orig_mod
        return clone

    @property
    def is_half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    def fp32_audio(self, request: dict[str, Any]) -> np.ndarray:
        """The stock pipeline's output for the same request with every component copied to float32 (eager).

        The yardstick for half-precision equivalence: our half-precision output may differ from the stock
        half-precision output by no more than the stock output itself differs from its own fp32 run.
        """
        parts = {}
        for name, part in self.pipe.components.items():
            part = _original(part)
            if isinstance(part, torch.nn.Module):
                part = copy.deepcopy(part).to(dtype=torch.float32)
            parts[name] = part
        pipe = AudioLDM2Pipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        pipe.score_waveforms = self.pipe.score_waveforms
        try:
            return self._run(pipe, request)
        finally:
            del pipe, parts
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def __call__(self, request: dict[str, Any]) -> np.ndarray:
        """Run the stock pipeline for one request; return its audio in generation order, unranked."""
        return self._run(self.pipe, request)

    @staticmethod
    def _run(pipe: Any, request: dict[str, Any]) -> np.ndarray:
        prompts = request["prompts"]
        negatives = request["negative_prompts"]
        out = pipe(
            prompts if len(prompts) > 1 else prompts[0],
            negative_prompt=None if negatives is None else (negatives if len(prompts) > 1 else negatives[0]),
            num_inference_steps=request["steps"],
            guidance_scale=request["guidance_scale"],
            audio_length_in_s=request["audio_length_s"],
            num_waveforms_per_prompt=request["num_waveforms"],
            eta=request["eta"],
            max_new_tokens=request["max_new_tokens"],
            generator=torch.Generator("cpu").manual_seed(request["seed"]),
        )
        return np.asarray(out.audios)
