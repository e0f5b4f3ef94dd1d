"""The ``compile`` group: ``torch.compile`` on the modules of the stages listed in ``compile.stages``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from ..stages.base import Stage

log = logging.getLogger(__name__)


def _ignore_unet_logging() -> None:
    """The AudioLDM 2 UNet logs (``logger.info``) inside ``forward`` when a latent side is not a multiple of its
    up-sampling factor; a logging call breaks the graph (so ``fullgraph=True`` fails). Tell dynamo to skip it."""
    from diffusers.pipelines.audioldm2 import modeling_audioldm2

    config = torch._dynamo.config
    functions = getattr(config, "ignore_logging_functions", None)
    if functions is None:
        functions = getattr(config, "ignore_logger_methods", None)
    if functions is not None:
        unet_logger = modeling_audioldm2.logger
        functions.update({unet_logger.info, unet_logger.warning, unet_logger.debug})


def effective_mode(mode: str, device: torch.device) -> str:
    """``auto`` is reduce-overhead on CUDA and none elsewhere; other modes are themselves."""
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "none"
    return mode


DEFAULT_CACHE_DIR = Path("~/.cache/audioldm2-fast/compile")


def configure_compile_cache(ccfg: DictConfig) -> Path | None:
    """Point Inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at a persistent directory.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` on every cache lookup, and its own default lives under ``/tmp``, which
    many clusters wipe between jobs. With a persistent directory, a fresh process that compiles settings an earlier
    process already compiled only re-traces with dynamo and loads the kernels. An environment variable set by the
    user wins over the default (not over an explicit ``compile.cache_dir``).
    """
    explicit = ccfg.get("cache_dir")
    if explicit is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    import torch._inductor.config

    path = Path(str(explicit) if explicit is not None else DEFAULT_CACHE_DIR).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..runtime.errors import ConfigError

        raise ConfigError("compile.cache_dir", f"cannot create {str(path)!r}: {exc.strerror or exc}") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    torch._inductor.config.fx_graph_cache = True
    return path


def compile_stage(stage: Stage, ccfg: DictConfig) -> int:
    """Replace each of the stage's compile targets by its compiled wrapper; return how many were compiled."""
    chosen = effective_mode(str(ccfg.mode), stage.device)
    if chosen == "none" or stage.name not in ccfg.stages:
        return 0
    mode = None if chosen == "default" else chosen
    _ignore_unet_logging()
    if (ccfg.get("backend") or "inductor") == "inductor":
        configure_compile_cache(ccfg)
    count = 0
    for owner, attr in stage.compile_targets():
        module = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            continue  # shared with a stage compiled before
        backend = ccfg.get("backend") or "inductor"
        options = {"mode": mode} if backend == "inductor" else {}
        compiled = torch.compile(
            module, backend=backend, fullgraph=bool(ccfg.fullgraph), dynamic=ccfg.get("dynamic"), **options
        )
        if isinstance(owner, dict):
            owner[attr] = compiled
        else:
            setattr(owner, attr, compiled)
        count += 1
    log.info("compile=%s: %d module(s) of stage %s", chosen, count, stage.name)
    return count
