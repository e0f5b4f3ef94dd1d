"""Stages for server tests, named in config as ``serve_stages:<Class>``.

``OomDenoiser``: the accelerator's out-of-memory error for any call whose prompts include one containing "oom" (a
batch holding such a request fails as a whole; the server then runs its requests one by one).
"""

from __future__ import annotations

import torch

from audioldm2_fast.stages.denoiser import Denoiser


class OomDenoiser(Denoiser):
    def __call__(self, state):
        if any("oom" in prompt for prompt in state.prompts):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(state)
