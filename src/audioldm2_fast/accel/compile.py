"""``compile``: ``torch.compile`` on the modules of the stages listed in ``compile.stages``.

Also owns ``length_bucket_s`` (shapes that compiled graphs are reused for; read by the denoiser) and the persistent
Inductor cache (``cache_dir``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.fields import setting
from ..config.optimization import Optimization, Plan
from ..runtime.errors import ConfigError

if TYPE_CHECKING:
    from ..stages.base import Stage

log = logging.getLogger(__name__)

MODES = ("none", "auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes that record CUDA graphs over fixed weight addresses.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
DEFAULT_CACHE_DIR = Path("~/.cache/audioldm2-fast/compile")


def effective_mode(mode: str, device_type: str) -> str:
    """``auto`` is reduce-overhead on CUDA and none elsewhere; other modes are themselves."""
    if mode == "auto":
        return "reduce-overhead" if device_type == "cuda" else "none"
    return mode


@dataclass(kw_only=True)
class Compile(Optimization):
    mode: str = setting(choices=MODES)
    stages: list[str] = setting()
    fullgraph: bool = setting()
    dynamic: bool | None = setting()
    backend: str = setting()  # any torch.compile backend; "eager" only traces (for counting graphs)
    length_bucket_s: float | None = setting(gt=0)
    cache_dir: str | None = setting()

    order = 90  # compiles the modules as the other optimisations left them

    def mode_on(self, device_type: str) -> str:
        return effective_mode(self.mode, device_type)

    def check(self, plan: Plan) -> None:
        if self.cache_dir is not None and Path(self.cache_dir).expanduser().is_file():
            raise ConfigError("compile.cache_dir", f"must be null or a directory path (got {self.cache_dir!r})")
        modes = {self.mode_on(plan.device_type(s)) for s in self.stages if s in plan.placements}
        mode = next((m for m in sorted(modes) if m != "none"), "none")
        if mode == "none":
            return
        offload = plan.setting("offload", "mode", "none")
        if offload in ("sequential", "group") and mode in CUDA_GRAPH_MODES:
            raise ConfigError(
                "compile",
                f"compile={mode} records CUDA graphs over fixed weight addresses, but offload={offload} moves weights "
                "during every forward; use compile=default or max-autotune-no-cudagraphs, or offload=model",
            )
        if offload in ("sequential", "group") and self.fullgraph:
            raise ConfigError(
                "compile.fullgraph", f"offload={offload} hooks break the graph; set compile.fullgraph=false"
            )
        if plan.setting("attention", "backend") == "sliced" and self.fullgraph and "denoiser" in self.stages:
            raise ConfigError("compile.fullgraph", "attention=sliced loops in Python over slices; set fullgraph=false")

    def check_stages(self, classes: Mapping[str, type[Stage]]) -> None:
        from ..stages.base import Stage  # the stage classes are imported, and torch with them

        compilable = sorted(name for name, cls in classes.items() if cls.compile_targets is not Stage.compile_targets)
        for stage in self.stages:
            if stage in classes and stage not in compilable:
                raise ConfigError("compile.stages", f"stage {stage!r} has nothing to compile; choose from {compilable}")

    def setup(self, stages: list[Stage]) -> None:
        for stage in stages:
            self.compile_stage(stage)

    def compile_stage(self, stage: Stage) -> int:
        """Replace each of the stage's compile targets by its compiled wrapper; return how many were compiled."""
        chosen = self.mode_on(stage.device.type)
        if chosen == "none" or stage.name not in self.stages:
            return 0
        count = compile_modules(
            stage,
            chosen,
            fullgraph=self.fullgraph,
            dynamic=self.dynamic,
            backend=self.backend,
            cache_dir=self.cache_dir,
        )
        log.info("compile=%s: %d module(s) of stage %s", chosen, count, stage.name)
        return count


def compile_modules(
    stage: Stage,
    mode: str,
    *,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    backend: str = "inductor",
    cache_dir: str | None = None,
) -> int:
    """``torch.compile`` every compile target of ``stage`` in ``mode`` (not ``none``); return how many were compiled.

    Shared by ``compile`` and by ``graphs`` (which compiles underneath its captures with ``mode="default"``).
    """
    import torch  # the stages are loaded: torch is already imported

    _ignore_unet_logging()
    if backend == "inductor":
        configure_compile_cache(cache_dir)
    options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
    count = 0
    for owner, attr in stage.compile_targets():
        module = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            continue  # shared with a stage compiled before
        compiled = torch.compile(module, backend=backend, fullgraph=fullgraph, dynamic=dynamic, **options)
        if isinstance(owner, dict):
            owner[attr] = compiled
        else:
            setattr(owner, attr, compiled)
        count += 1
    return count


def _ignore_unet_logging() -> None:
    """The AudioLDM 2 UNet logs (``logger.info``) inside ``forward`` when a latent side is not a multiple of its
    up-sampling factor; a logging call breaks the graph (so ``fullgraph=True`` fails). Tell dynamo to skip it."""
    import torch
    from diffusers.pipelines.audioldm2 import modeling_audioldm2

    config = torch._dynamo.config
    functions = getattr(config, "ignore_logging_functions", None)
    if functions is None:
        functions = getattr(config, "ignore_logger_methods", None)
    if functions is not None:
        unet_logger = modeling_audioldm2.logger
        functions.update({unet_logger.info, unet_logger.warning, unet_logger.debug})


def configure_compile_cache(cache_dir: str | None) -> Path | None:
    """Point Inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at a persistent directory.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` on every cache lookup, and its own default lives under ``/tmp``, which
    many clusters wipe between jobs. With a persistent directory, a fresh process that compiles settings an earlier
    process already compiled only re-traces with dynamo and loads the kernels. An environment variable set by the
    user wins over the default (not over an explicit ``compile.cache_dir``).
    """
    if cache_dir is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    import torch._inductor.config

    path = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("compile.cache_dir", f"cannot create {str(path)!r}: {exc.strerror or exc}") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    torch._inductor.config.fx_graph_cache = True
    return path
