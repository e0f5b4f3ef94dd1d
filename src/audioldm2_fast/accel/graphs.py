"""``graphs``: each stage's tensor work captured as CUDA graphs, one per input signature, and replayed.

A stage lists in ``graphed`` the methods that are functions of tensors only (the text encoders' ``encode``, the
prior's ``generate``, the denoiser's whole ``denoise`` loop, the VAE's ``decode``, the vocoder's ``waveform``). On
CUDA this optimisation replaces each by a :class:`GraphedMethod`: the first call with a new signature (the shapes,
dtypes and devices of its tensors, and its plain keyword values such as the number of steps) warms the method up on
a side stream and captures it; every later call with that signature copies its inputs into the graph's static input
buffers, replays the graph (one launch for the whole denoising loop) and returns copies of its outputs. Compiling
(``graphs.inductor``, Inductor kernels under the capture) and capturing therefore happen in the first call of a shape
only; ``compile.length_bucket_s`` makes nearby audio lengths share one shape.

All graphs of one Generator share one memory pool. That is safe because replays never overlap, every input lives in
a static buffer outside the pool, outputs are copied out right after their replay, and nothing a graph allocates is
read by a later replay before that replay has written it.

A method whose capture fails (an operation CUDA graphs cannot record) runs uncaptured for that signature, with one
warning. ``graphs=cuda`` is refused for stages that are not on CUDA; ``graphs=auto`` captures on CUDA and does
nothing elsewhere (the CPU and MPS have no graphs).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.fields import setting
from ..config.optimization import Optimization, Plan
from ..runtime.errors import ConfigError
from .compile import CUDA_GRAPH_MODES, compile_modules, effective_mode

if TYPE_CHECKING:
    import torch

    from ..stages.base import Stage

log = logging.getLogger(__name__)

MODES = ("none", "auto", "cuda")


def captures_on(mode: str, device_type: str) -> bool:
    """Whether ``mode`` captures graphs for a stage on ``device_type``."""
    return device_type == "cuda" and mode in ("auto", "cuda")


def signature(args: tuple[Any, ...], static: Mapping[str, Any]) -> tuple:
    """The key of one call: each positional tensor's shape, dtype and device (None stays None), and the keyword
    values. A positional argument that is neither a tensor nor None is refused: it could not be fed to a replay."""
    import torch

    parts = []
    for index, arg in enumerate(args):
        if arg is None:
            parts.append(None)
        elif isinstance(arg, torch.Tensor):
            parts.append((tuple(arg.shape), arg.dtype, str(arg.device)))
        else:
            raise TypeError(f"graphed methods take tensors (or None) positionally; argument {index} is {type(arg)}")
    return tuple(parts), tuple(sorted(static.items()))


def _tensors(value: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    raise TypeError(f"graphed methods return tensors or tuples of tensors, not {type(value)}")


def _copy_out(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_copy_out(v) for v in value)
    return value.clone()


@dataclass
class Captured:
    """One captured signature: the static input buffers, the replay, and the graph's output tensors."""

    inputs: list[torch.Tensor | None]
    replay: Callable[[], None]
    outputs: Any
    replays: int = 0

    def __call__(self, args: tuple[Any, ...]) -> Any:
        for buffer, arg in zip(self.inputs, args, strict=True):
            if buffer is not None:
                buffer.copy_(arg)
        self.replay()
        self.replays += 1
        return _copy_out(self.outputs)


class CudaCapture:
    """Captures with ``torch.cuda.CUDAGraph`` in one shared memory pool (created on first use)."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self._pool: Any = None

    def __call__(self, fn: Callable[..., Any], inputs: list[Any], static: Mapping[str, Any]) -> Captured:
        import torch

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy initialisation, compiling, cuBLAS workspaces; never captured
            for _ in range(self.warmup):
                fn(*inputs, **static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = fn(*inputs, **static)
        _tensors(outputs)  # refuse anything but tensors before the first replay
        return Captured(inputs=inputs, replay=graph.replay, outputs=outputs)


class GraphedMethod:
    """A stage method replaced by captured graphs, one per :func:`signature`, at most ``max_shapes`` kept (the least
    recently used is dropped first)."""

    def __init__(self, fn: Callable[..., Any], label: str, capture: Callable[..., Captured], max_shapes: int = 16):
        self.fn, self.label, self.capture, self.max_shapes = fn, label, capture, max_shapes
        self.entries: OrderedDict[tuple, Captured] = OrderedDict()
        self.uncaptured: set[tuple] = set()  # signatures whose capture failed: they run as the method itself
        self.captures = 0

    def __call__(self, *args: Any, **static: Any) -> Any:
        key = signature(args, static)
        if key in self.uncaptured:
            return self.fn(*args, **static)
        entry = self.entries.get(key)
        if entry is None:
            inputs = [None if a is None else a.clone() for a in args]
            try:
                entry = self.capture(self.fn, inputs, static)
            except Exception as exc:  # noqa: BLE001 - any failure to capture means: run this signature uncaptured
                self.uncaptured.add(key)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                log.warning("graphs: %s runs uncaptured for this shape (capture failed: %s)", self.label, first)
                _recover_after_failed_capture()
                return self.fn(*args, **static)
            self.captures += 1
            self.entries[key] = entry
            while len(self.entries) > self.max_shapes:
                self.entries.popitem(last=False)
            log.info("graphs: captured %s for %s", self.label, key[0])
        else:
            self.entries.move_to_end(key)
        return entry(args)

    @property
    def replays(self) -> int:
        return sum(entry.replays for entry in self.entries.values())

    def clear(self) -> None:
        self.entries.clear()


def _recover_after_failed_capture() -> None:
    import torch

    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a broken capture may leave an error to collect: collected here
            torch.cuda.synchronize()


@dataclass(kw_only=True)
class Graphs(Optimization):
    mode: str = setting(choices=MODES)
    stages: list[str] = setting()
    inductor: bool = setting()  # torch.compile (Inductor, no CUDA graphs of its own) underneath the capture
    warmup: int = setting(ge=1)  # eager calls on a side stream before a signature is captured
    max_shapes: int = setting(ge=1)  # captured signatures kept per method (least recently used dropped)

    order = 95  # after compile: it captures the modules as compile (and everything else) left them

    def __post_init__(self) -> None:
        self._methods: list[GraphedMethod] = []
        self._cache_dir: str | None = None  # compile.cache_dir, read by check

    def captures(self, device_type: str) -> bool:
        return captures_on(self.mode, device_type)

    def check(self, plan: Plan) -> None:
        placed = [s for s in self.stages if s in plan.placements]
        if self.mode == "cuda":
            for stage in placed:
                kind = plan.device_type(stage)
                if kind != "cuda":
                    raise ConfigError(
                        "graphs",
                        f"graphs=cuda captures CUDA graphs, but stage {stage!r} runs on {kind}; use graphs=auto "
                        "(captures on CUDA, nothing elsewhere) or graphs=none",
                    )
        captured = [s for s in placed if self.captures(plan.device_type(s))]
        if not captured:
            return
        offload = plan.setting("offload", "mode", "none")
        if offload != "none":
            raise ConfigError(
                "graphs",
                f"captured graphs replay fixed weight addresses, but offload={offload} moves the weights; use "
                "offload=none, or graphs=none",
            )
        compile_mode = str(plan.setting("compile", "mode", "none"))
        compiled = set(plan.setting("compile", "stages", []) or [])
        for stage in captured:
            if stage in compiled and effective_mode(compile_mode, "cuda") in CUDA_GRAPH_MODES:
                raise ConfigError(
                    "compile",
                    f"compile={compile_mode} records its own CUDA graphs in stage {stage!r}, which graphs captures; "
                    "use compile=none (graphs.inductor=true compiles under the capture) or compile=default",
                )
        self._cache_dir = plan.setting("compile", "cache_dir")

    def check_stages(self, classes: Mapping[str, type[Stage]]) -> None:
        capturable = sorted(name for name, cls in classes.items() if getattr(cls, "graphed", ()))
        for stage in self.stages:
            if stage in classes and stage not in capturable:
                raise ConfigError(
                    "graphs.stages", f"stage {stage!r} has no tensor-only method to capture; choose from {capturable}"
                )

    def setup(self, stages: list[Stage]) -> None:
        capture = CudaCapture(warmup=self.warmup)  # one memory pool for every stage and shape
        for stage in stages:
            if stage.name not in self.stages or not self.captures(stage.device.type):
                continue
            if self.inductor:
                compile_modules(stage, "default", dynamic=False, cache_dir=self._cache_dir)
            for name in stage.graphed:
                method = GraphedMethod(getattr(stage, name), f"{stage.name}.{name}", capture, self.max_shapes)
                setattr(stage, name, method)
                self._methods.append(method)
            log.info("graphs: %s captured per shape (%s)", stage.name, ", ".join(stage.graphed))

    def teardown(self) -> None:
        for method in self._methods:
            method.clear()
        self._methods.clear()
