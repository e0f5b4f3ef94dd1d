"""The Stage: one step of the chain that owns its modules, its device and its dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from ..checkpoints.store import ComponentStore
    from .state import GenerationState

#: Set on a module whose placement is managed by offload hooks; ``Stage.place`` leaves such modules alone.
HOOKED = "_audioldm2_fast_offload_hooked"


class Stage:
    """A step of the chain, built from config by name.

    Lifecycle (as a LightningModule's hooks): ``setup()`` loads the stage's checkpoint components in its dtype
    (the runner's offload policy then places them); ``__call__(state)`` moves its inputs to its device and dtype
    (the only place casts happen), runs, and adds its outputs to the state; ``teardown()`` releases what it holds.
    """

    #: Checkpoint components (model_index.json names) this stage uses.
    components: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, name: str, device: torch.device, dtype: torch.dtype, store: ComponentStore, cfg: DictConfig
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.store = store
        self.cfg = cfg
        self.modules: dict[str, Any] = {}
        #: Where components are built or loaded; the runner sets the CPU when an offload mode places them later.
        self.load_device: torch.device | None = None

    def setup(self) -> None:
        for component in self.components:
            self.modules[component] = self.store.get(component, self.dtype, self.load_device or self.device)

    def place(self, device: torch.device | None = None) -> None:
        """Put this stage's torch modules on ``device`` (default: its own) in its dtype; a no-op where they are."""
        device = device or self.device
        for module in self.modules.values():
            if isinstance(module, torch.nn.Module) and not getattr(module, HOOKED, False):
                param = next(module.parameters(), None)
                if param is None or param.device != device or param.dtype != self.dtype:
                    module.to(device=device, dtype=self.dtype)

    def compile_targets(self) -> list[tuple[Any, str]]:
        """(owner, name) pairs whose module ``compile`` may replace by its compiled wrapper.

        The owner is a dict (``self.modules``) or a module whose attribute holds the submodule.
        """
        return []

    def to_stage(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Move an input tensor to this stage; floating tensors also take the stage's dtype."""
        if tensor is None:
            return None
        if tensor.is_floating_point():
            return tensor.to(device=self.device, dtype=self.dtype)
        return tensor.to(device=self.device)

    def __call__(self, state: GenerationState) -> GenerationState:
        raise NotImplementedError

    def teardown(self) -> None:
        self.modules.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"
