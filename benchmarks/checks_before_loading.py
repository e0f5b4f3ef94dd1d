"""How long the checks before loading take (README, "Failures and safety", "Checkpoints").

``PYTHONPATH=src python benchmarks/checks_before_loading.py``: the file checks (safetensors headers) and the
component configs built on ``meta`` for ``tiny``, every check before loading for a ``tiny`` run, and the ``meta``
builds of the full-size architecture's seven components (what the config check costs on a published checkpoint).
The model libraries are imported first, so their import is not counted.
"""

from __future__ import annotations

import time

import torch

from audioldm2_fast.checkpoints import verify
from audioldm2_fast.checkpoints.resolve import read_model_index, resolve_checkpoint
from audioldm2_fast.checkpoints.safety import check_checkpoint_files
from audioldm2_fast.checkpoints.synthetic import make_store
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.generator import _CHECKED, check_requests, requests_of

COMPONENTS = ["text_encoder", "text_encoder_2", "projection_model", "language_model", "unet", "vae", "vocoder"]


def timed(label: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    print(f"{label}: {time.perf_counter() - t0:.3f} s")


def main() -> None:
    cfg = compose_config(["checkpoint=tiny", "prompt=rain"])
    path = resolve_checkpoint(cfg.checkpoint)
    store = make_store(cfg.checkpoint, path)
    for name in COMPONENTS:  # import every class once
        store.meta(name, torch.float32)
    timed("tiny: safetensors headers", lambda: check_checkpoint_files(path, read_model_index(path)))
    verify._CHECKED.clear()
    timed("tiny: component configs on meta", lambda: verify.check_component_configs(store, COMPONENTS))
    verify._CHECKED.clear()
    _CHECKED.clear()
    timed("tiny: every check before loading", lambda: check_requests(cfg, requests_of(cfg)))
    full = compose_config(["checkpoint=synthetic-audioldm2", "prompt=rain"])
    full_store = make_store(full.checkpoint, resolve_checkpoint(full.checkpoint))
    timed("full size: the seven components on meta", lambda: [full_store.meta(n, torch.float32) for n in COMPONENTS])


if __name__ == "__main__":
    main()
