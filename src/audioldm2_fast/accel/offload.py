"""The ``offload`` group: where each stage's weights live between and during its calls.

- ``none``: every stage's modules stay on its device.
- ``model``: a stage's modules move to its device when it starts and back to the CPU when it ends.
- ``sequential``: accelerate hooks move each submodule's weights to the device only for its own forward.
- ``group``: diffusers group offloading moves groups of blocks ahead of use, on a side CUDA stream if asked.

Stages on the CPU are simply placed there in every mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig

from ..stages.base import HOOKED, Stage


class NoOffload:
    def __init__(self, stages: Sequence[Stage], ocfg: DictConfig):
        self.stages = list(stages)
        self.ocfg = ocfg
        self.offload_device = torch.device(ocfg.get("offload_device", "cpu"))

    def setup(self) -> None:
        for stage in self.stages:
            stage.place()

    def before(self, stage: Stage) -> None:
        pass

    def after(self, stage: Stage) -> None:
        pass


class ModelOffload(NoOffload):
    def setup(self) -> None:
        for stage in self.stages:
            stage.place(self.offload_device)

    def before(self, stage: Stage) -> None:
        stage.place()

    def after(self, stage: Stage) -> None:
        if stage.device != self.offload_device:
            stage.place(self.offload_device)
            if stage.device.type == "cuda":
                torch.cuda.empty_cache()


class _HookOffload(NoOffload):
    """Base of the modes that install hooks once: each distinct module is hooked by the first stage that owns it."""

    def setup(self) -> None:
        for stage in self.stages:
            if stage.device.type == "cpu":
                stage.place()
                continue
            for module in stage.modules.values():
                if isinstance(module, torch.nn.Module) and not getattr(module, HOOKED, False):
                    self.hook(module, stage.device)
                    setattr(module, HOOKED, True)

    def hook(self, module: torch.nn.Module, device: torch.device) -> None:
        raise NotImplementedError


class SequentialOffload(_HookOffload):
    def hook(self, module: torch.nn.Module, device: torch.device) -> None:
        from accelerate import cpu_offload

        cpu_offload(module, execution_device=device)


class GroupOffload(_HookOffload):
    def hook(self, module: torch.nn.Module, device: torch.device) -> None:
        from diffusers.hooks import apply_group_offloading

        kwargs = {"offload_type": self.ocfg.offload_type, "use_stream": bool(self.ocfg.use_stream)}
        if self.ocfg.offload_type == "block_level":
            kwargs["num_blocks_per_group"] = int(self.ocfg.num_blocks_per_group)
        apply_group_offloading(module, onload_device=device, offload_device=self.offload_device, **kwargs)


POLICIES = {"none": NoOffload, "model": ModelOffload, "sequential": SequentialOffload, "group": GroupOffload}


def make_offload(ocfg: DictConfig, stages: Sequence[Stage]) -> NoOffload:
    return POLICIES[ocfg.mode](stages, ocfg)
