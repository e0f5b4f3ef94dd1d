"""``attention``: an SDPA kernel choice per stage, or another attention processor on the UNet.

The AudioLDM 2 UNet's processors call ``F.scaled_dot_product_attention`` directly (``set_attention_backend`` has no
effect on it), so kernels are chosen with ``torch.nn.attention.sdpa_kernel`` around the stages listed in
``attention.stages``. Text encoders use SDPA wherever transformers implements it for them, and the same context
applies to them. ``sliced`` and ``xformers`` replace the UNet's processors instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.fields import setting
from ..config.optimization import Optimization, Plan
from ..runtime.errors import ConfigError

if TYPE_CHECKING:
    from ..stages.base import Stage

BACKENDS = ("sdpa", "math", "flash", "efficient", "cudnn", "sliced", "xformers")
#: Backends whose CUDA kernels never hold the queries x keys scores (the memory planner traces them that way).
FUSED = ("sdpa", "flash", "efficient", "cudnn", "xformers")
#: SDPA kernels per backend. Flash and cuDNN cannot take the UNet's T5 attention mask on CUDA; masked calls fall back
#: to the memory-efficient kernel, which can.
KERNELS = {
    "math": ("MATH",),
    "flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION"),
    "efficient": ("EFFICIENT_ATTENTION",),
    "cudnn": ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"),
}


@dataclass(kw_only=True)
class Attention(Optimization):
    backend: str = setting(choices=BACKENDS)
    stages: list[str] = setting()
    slice_size: str | int = setting()  # sliced: "auto", "max" or a number of slices

    order = 10  # processors are swapped before weights are placed or modules compiled

    def fused_on(self, stage: str, device_type: str) -> bool:
        """Whether ``stage``'s attention runs as a fused CUDA kernel (no scores held)."""
        return device_type == "cuda" and self.backend in FUSED and stage in self.stages

    def check(self, plan: Plan) -> None:
        for stage in self.stages:
            if stage not in plan.cfg.stages:
                raise ConfigError("attention.stages", f"must be a list of stage names (got {self.stages!r})")
        backend, where = self.backend, f"attention={self.backend}"
        for stage in (s for s in self.stages if s in plan.placements):
            device, dtype = plan.placements[stage]
            kind, info = device.split(":")[0], plan.info(device)
            if backend in ("efficient", "cudnn", "xformers") and kind != "cuda":
                raise ConfigError("attention", f"{where} needs a CUDA GPU, but stage {stage} runs on {kind}")
            if backend == "flash" and kind == "mps":
                raise ConfigError("attention", f"{where} has no MPS kernel (stage {stage}); use attention=sdpa")
            if kind != "cuda" or info is None:
                continue
            if backend in ("flash", "cudnn") and (info.capability or (0, 0)) < (8, 0):
                cap = ".".join(map(str, info.capability or (0, 0)))
                raise ConfigError("attention", f"{where} needs an sm80+ GPU; {info.name} is sm{cap}")
            if backend == "flash" and dtype not in ("fp16", "bf16"):
                raise ConfigError("attention", f"{where} needs fp16 or bf16 on CUDA, but stage {stage} is {dtype}")
        if backend == "xformers" and importlib.util.find_spec("xformers") is None:
            raise ConfigError("attention", "attention=xformers needs the xformers package (pip install xformers)")

    def setup(self, stages: list[Stage]) -> None:
        """``sliced`` and ``xformers``: swap the UNet's attention processors."""
        for stage in stages:
            unet = stage.modules.get("unet")
            if unet is None or stage.name not in self.stages:
                continue
            if self.backend == "sliced":
                unet.set_attention_slice(self.slice_size)
            elif self.backend == "xformers":
                unet.enable_xformers_memory_efficient_attention()

    def context(self, stage: Stage) -> contextlib.AbstractContextManager:
        """The SDPA kernel restriction around one listed stage's call (a no-op for sdpa, sliced and xformers)."""
        if self.backend not in KERNELS or stage.name not in self.stages:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel  # the stage is running: torch is loaded

        return sdpa_kernel([getattr(SDPBackend, k) for k in KERNELS[self.backend] if hasattr(SDPBackend, k)])
