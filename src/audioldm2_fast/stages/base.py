"""The Stage: one step of the chain that owns its modules, its device, its dtype and its own settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from ..config.placement import placement
from ..config.schema import StagePlacement
from ..runtime.devices import OFFLOAD_HOOKED, Probe, probe_device

if TYPE_CHECKING:
    from ..checkpoints.store import ComponentStore
    from .state import GenerationState

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in TORCH_DTYPES.items()}[dtype]


def stage_placement(cfg: DictConfig, stage: str, probe: Probe = probe_device) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype a stage runs in (``config.placement`` says how they are chosen)."""
    device, dtype = placement(cfg, stage, probe)
    return torch.device(device), TORCH_DTYPES[dtype]


@dataclass(frozen=True, kw_only=True)
class StageSettings(StagePlacement):
    """A stage's own config node (``stages.<name>``); a stage class with settings subclasses it as ``Settings``."""


class Stage:
    """A step of the chain, built from config by name.

    Lifecycle (as a LightningModule's hooks): ``setup()`` loads the stage's checkpoint components in its dtype
    (the Generator's optimisations then place them); ``__call__(state)`` moves its inputs to its device and dtype
    (the only place casts happen), runs, and adds its outputs to the state; ``teardown()`` releases what it holds.

    A stage declares the state fields it ``reads`` (they must be set before it runs: by the request or by an
    earlier stage) and those it ``writes``; a chain whose order breaks that is refused before anything loads. Its
    ``Settings`` dataclass is the schema of its ``stages.<name>`` node, and all the stage reads of the config.
    """

    #: Checkpoint components (model_index.json names) this stage uses.
    components: ClassVar[tuple[str, ...]] = ()
    #: State fields it needs and state fields it sets (see ``state.GenerationState``).
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    Settings: ClassVar[type[StageSettings]] = StageSettings
    #: Methods that are functions of tensors only (tensors in, a tensor or a tuple of tensors out; keyword arguments
    #: are plain values that select the work): what the ``graphs`` optimisation may replace by captured graphs.
    graphed: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, name: str, device: torch.device, dtype: torch.dtype, store: ComponentStore, settings: Any
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.store = store
        self.settings = settings
        self.modules: dict[str, Any] = {}
        #: Where components are built or loaded; an offload policy that places them later sets the CPU here.
        self.load_device: torch.device | None = None

    def setup(self) -> None:
        for component in self.components:
            self.modules[component] = self.store.get(component, self.dtype, self.load_device or self.device)

    def place(self, device: torch.device | None = None) -> None:
        """Put this stage's torch modules on ``device`` (default: its own) in its dtype; a no-op where they are."""
        device = device or self.device
        for module in self.modules.values():
            if isinstance(module, torch.nn.Module) and not getattr(module, OFFLOAD_HOOKED, False):
                param = next(module.parameters(), None)
                if param is None or param.device != device or param.dtype != self.dtype:
                    module.to(device=device, dtype=self.dtype)

    def compile_targets(self) -> list[tuple[Any, str]]:
        """(owner, name) pairs whose module ``compile`` may replace by its compiled wrapper.

        The owner is a dict (``self.modules``) or a module whose attribute holds the submodule. A stage that
        overrides this has something to compile (``compile.stages`` may list it).
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
