"""``offload``: where each stage's weights live between and during its calls.

- ``none``: every stage's modules stay on its device.
- ``model``: a stage's modules move to its device when it starts and back to the CPU when it ends.
- ``sequential``: accelerate hooks move each submodule's weights to the device only for its own forward.
- ``group``: diffusers group offloading moves groups of blocks ahead of use, on a side CUDA stream if asked.

Stages on the CPU are simply placed there in every mode. Every mode but ``none`` has stages build their weights on
the CPU, so a whole model is never held on the accelerator before the policy places it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.fields import setting
from ..config.optimization import Optimization, Plan
from ..runtime.devices import OFFLOAD_HOOKED
from ..runtime.errors import ConfigError

if TYPE_CHECKING:
    from ..stages.base import Stage

MODES = ("none", "model", "sequential", "group")
#: Modes that move weights during a forward (hooks), not between stage calls.
HOOKED_MODES = ("sequential", "group")


@dataclass(kw_only=True)
class Offload(Optimization):
    mode: str = setting(choices=MODES)
    offload_device: str = setting(choices=("cpu",))
    offload_type: str = setting(choices=("block_level", "leaf_level"))  # group only
    num_blocks_per_group: int = setting(ge=1)  # group, block_level only
    use_stream: bool = setting()  # group only: prefetch on a side CUDA stream

    order = 50  # after processors are swapped, before modules are compiled

    def check(self, plan: Plan) -> None:
        if self.mode == "none":
            return
        if not plan.on_accelerator():
            raise ConfigError(
                "offload",
                f"offload={self.mode} moves weights between the CPU and an accelerator, but every stage runs on the "
                "CPU; use offload=none (or run on a GPU)",
            )
        if (
            self.mode == "group"
            and self.use_stream
            and not any(device.split(":")[0] == "cuda" for device, _ in plan.placements.values())
        ):
            raise ConfigError("offload.use_stream", "streams need CUDA; set offload.use_stream=false")

    def load_device(self, stage: Stage) -> str | None:
        return self.offload_device if self.mode != "none" else None

    def setup(self, stages: list[Stage]) -> None:
        if self.mode in ("none", "model"):
            for stage in stages:
                stage.place(None if self.mode == "none" or stage.device.type == "cpu" else self._device())
            return
        for stage in stages:
            if stage.device.type == "cpu":
                stage.place()
                continue
            for module in stage.modules.values():
                if hasattr(module, "parameters") and not getattr(module, OFFLOAD_HOOKED, False):
                    self._hook(module, stage.device)
                    setattr(module, OFFLOAD_HOOKED, True)

    def before(self, stage: Stage) -> None:
        if self.mode == "model":
            stage.place()

    def after(self, stage: Stage) -> None:
        if self.mode == "model" and stage.device.type != "cpu":
            stage.place(self._device())
            if stage.device.type == "cuda":
                import torch  # the stage ran on CUDA: torch is loaded

                torch.cuda.empty_cache()

    def _device(self) -> Any:
        import torch  # stages are loaded: torch is loaded

        return torch.device(self.offload_device)

    def _hook(self, module: Any, device: Any) -> None:
        if self.mode == "sequential":
            from accelerate import cpu_offload  # this mode's own dependency

            cpu_offload(module, execution_device=device)
            return
        from diffusers.hooks import apply_group_offloading  # this mode's own dependency

        kwargs: dict[str, Any] = {"offload_type": self.offload_type, "use_stream": self.use_stream}
        if self.offload_type == "block_level":
            kwargs["num_blocks_per_group"] = self.num_blocks_per_group
        apply_group_offloading(module, onload_device=device, offload_device=self._device(), **kwargs)
