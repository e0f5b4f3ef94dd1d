"""The latent diffusion UNet, the scheduler loop and classifier-free guidance.

With ``solver: precomputed`` (the default) and a scheduler :mod:`.solvers` can turn into a table (DPM-Solver++ 2M,
DDIM, Euler), the whole loop is :meth:`Denoiser.denoise`: UNet, guidance and solver update as one function of tensors,
which the ``graphs`` optimisation may capture whole. Other schedulers, and ``solver: scheduler``, run diffusers'
scheduler object step by step, as the stock pipeline does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..config.fields import setting
from ..config.schema import SchedulerConfig
from ..runtime.errors import ConfigError
from ..runtime.progress import progress_bar
from .base import Stage, StageSettings
from .chunks import run_in_sub_batches
from .geometry import AudioGeometry, audio_geometry
from .schedulers import build_scheduler
from .solvers import Solver, precompute
from .state import GenerationState

SOLVERS = ("precomputed", "scheduler")


def predict_noise(
    unet: torch.nn.Module,
    model_input: torch.Tensor,
    t: torch.Tensor,
    cond_gpt2: torch.Tensor,
    cond_t5: torch.Tensor,
    mask_t5: torch.Tensor,
    sub_batch: int | None,
) -> torch.Tensor:
    """One UNet evaluation over the (guidance-doubled) batch, in ``memory.unet_batch_size`` rows at a time."""
    return run_in_sub_batches(
        lambda x, c1, c2, m: unet(
            x, t, encoder_hidden_states=c1, encoder_hidden_states_1=c2, encoder_attention_mask_1=m, return_dict=False
        )[0],
        sub_batch,
        model_input,
        cond_gpt2,
        cond_t5,
        mask_t5,
    )


@dataclass(frozen=True, kw_only=True)
class DenoiserSettings(StageSettings):
    scheduler: SchedulerConfig = setting()
    unet_batch_size: int | None = setting(ge=1)  # memory.unet_batch_size
    length_bucket_s: float | None = setting(gt=0)  # compile.length_bucket_s
    progress: bool = setting()
    solver: str = setting("precomputed", choices=SOLVERS)


class Denoiser(Stage):
    components = ("unet",)
    reads = ("generated_embeds", "t5_embeds", "t5_mask")
    writes = ("latents", "waveform_length")
    Settings = DenoiserSettings
    graphed = ("denoise",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Precomputed solvers by (steps, eta): kept, since captured graphs read their tables in place.
        self._solvers: dict[tuple[int, float], Solver | None] = {}
        self._tick = None  # the progress bar's update while a call runs

    def compile_targets(self):
        return [(self.modules, "unet")]

    def _step_kwargs(self, scheduler, state: GenerationState) -> dict:
        params = set(inspect.signature(scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = state.eta
        if "generator" in params:
            # Per item: one generator per latent row, so each item's noise is drawn from its own stream.
            per_row = [g for g in state.item_generators or () for _ in range(state.num_waveforms)]
            kwargs["generator"] = per_row or state.generator
        return kwargs

    def geometry(self, audio_length_s: float | None) -> AudioGeometry:
        """Frames, latent shape and kept samples for a requested length (with ``compile.length_bucket_s``)."""
        return store_geometry(self.store, audio_length_s, self.settings.length_bucket_s)

    def solver(self, steps: int, eta: float) -> Solver | None:
        """The precomputed solver for ``steps`` and ``eta`` on this stage's device (None: use the scheduler)."""
        if getattr(self.settings, "solver", "scheduler") != "precomputed":
            return None
        key = (int(steps), float(eta))
        if key not in self._solvers:
            scheduler = build_scheduler(self.settings.scheduler, self.store.config("scheduler"))
            scheduler.set_timesteps(int(steps), device="cpu")
            self._solvers[key] = precompute(scheduler, self.device, float(eta))
        return self._solvers[key]

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> GenerationState:
        unet = self.modules["unet"]
        geometry = self.geometry(state.audio_length_s)
        state.waveform_length = geometry.waveform_length

        n = state.num_waveforms
        # [neg_0, neg_1, ..., pos_0, pos_1, ...] -> every row repeated n times, as the stock pipeline lays it out.
        cond_gpt2 = self.to_stage(state.generated_embeds).repeat_interleave(n, dim=0)
        cond_t5 = self.to_stage(state.t5_embeds).repeat_interleave(n, dim=0)
        mask_t5 = self.to_stage(state.t5_mask).repeat_interleave(n, dim=0)

        scheduler = build_scheduler(self.settings.scheduler, self.store.config("scheduler"))
        scheduler.set_timesteps(state.steps, device=self.device)
        shape = (state.batch_size * n, unet.config.in_channels, *geometry.latent_hw)
        latents = self._initial_latents(state, shape) * scheduler.init_noise_sigma
        solver = self.solver(state.steps, state.eta)
        graphed = "denoise" in self.__dict__  # replaced by a captured graph: one call, no per-step progress
        steps = progress_bar(
            range(state.steps), enabled=self.settings.progress and not graphed, desc="denoising", unit="step"
        )
        with steps:
            self._tick = steps.update if self.settings.progress and not graphed else None
            try:
                if solver is None:
                    latents = self._scheduler_loop(scheduler, state, latents, cond_gpt2, cond_t5, mask_t5)
                else:
                    scales = self._guidance_scales(state) if state.do_classifier_free_guidance else None
                    noise = self._solver_noise(state, solver, shape) if solver.stochastic else None
                    inputs = (latents, cond_gpt2, cond_t5, mask_t5, scales, noise)
                    if state.callback is not None:  # the user's code runs between steps: never captured
                        latents = self._loop(solver, *inputs, callback=state.callback)
                    else:
                        latents = self.denoise(*inputs, steps=state.steps, eta=state.eta)
            finally:
                self._tick = None
        state.latents = latents
        return state

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        cond_gpt2: torch.Tensor,
        cond_t5: torch.Tensor,
        mask_t5: torch.Tensor,
        scales: torch.Tensor | None,
        noise: torch.Tensor | None,
        *,
        steps: int,
        eta: float,
    ) -> torch.Tensor:
        """The whole denoising loop as a function of tensors: initial latents and conditioning in, final latents out.

        ``scales`` (rows, 1, 1, 1) are the guidance scales per latent row (None: no guidance); ``noise``
        (steps, rows, C, H, W) is a stochastic solver's noise, drawn before the loop.
        """
        return self._loop(self.solver(steps, eta), latents, cond_gpt2, cond_t5, mask_t5, scales, noise)

    def _loop(self, solver, latents, cond_gpt2, cond_t5, mask_t5, scales, noise, callback=None) -> torch.Tensor:
        unet, sub_batch = self.modules["unet"], self.settings.unet_batch_size
        previous = None
        for i in range(solver.steps):
            model_input = torch.cat([latents] * 2) if scales is not None else latents
            model_input = solver.scale_input(i, model_input)
            noise_pred = predict_noise(unet, model_input, solver.timesteps[i], cond_gpt2, cond_t5, mask_t5, sub_batch)
            if scales is not None:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + scales * (text - uncond)
            latents, previous = solver.step(i, latents, noise_pred, previous, None if noise is None else noise[i])
            if callback is not None:
                latents = _after_step(callback, i, solver.timesteps[i], latents)
            if self._tick is not None:
                self._tick(1)
        return latents

    def _scheduler_loop(self, scheduler, state, latents, cond_gpt2, cond_t5, mask_t5) -> torch.Tensor:
        """diffusers' scheduler object, step by step (schedulers without a precomputed solver)."""
        unet = self.modules["unet"]
        step_kwargs = self._step_kwargs(scheduler, state)
        guidance = state.do_classifier_free_guidance
        sub_batch = self.settings.unet_batch_size
        for i, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = predict_noise(unet, model_input, t, cond_gpt2, cond_t5, mask_t5, sub_batch)
            if guidance:
                noise_pred = apply_guidance(noise_pred, state)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            if state.callback is not None:
                latents = _after_step(state.callback, i, t, latents)
            if self._tick is not None:
                self._tick(1)
        return latents

    def _initial_latents(self, state: GenerationState, shape: tuple[int, ...]) -> torch.Tensor:
        if state.initial_latents is not None:  # as diffusers' ``latents=``: the noise to start from
            latents = self.to_stage(state.initial_latents)
            if tuple(latents.shape) != shape:
                raise ConfigError("latents", f"must have shape {shape} for this request (got {tuple(latents.shape)})")
            return latents
        if state.item_generators:  # each item draws its candidates' latents from its own generator
            item_shape = (state.num_waveforms, *shape[1:])
            return torch.cat(
                [
                    randn_tensor(item_shape, generator=g, device=self.device, dtype=self.dtype)
                    for g in state.item_generators
                ]
            )
        return randn_tensor(shape, generator=state.generator, device=self.device, dtype=self.dtype)

    def _guidance_scales(self, state: GenerationState) -> torch.Tensor:
        """One guidance scale per latent row (each prompt's, repeated over its candidates), float32 on the device."""
        per_prompt = state.item_guidance_scales or [state.guidance_scale] * state.batch_size
        rows = [float(scale) for scale in per_prompt for _ in range(state.num_waveforms)]
        return torch.tensor(rows, dtype=torch.float32).view(-1, 1, 1, 1).to(self.device)

    def _solver_noise(self, state: GenerationState, solver: Solver, shape: tuple[int, ...]) -> torch.Tensor:
        """Every step's noise, drawn before the loop in the order the scheduler draws it inside (same values)."""
        per_row = [g for g in state.item_generators or () for _ in range(state.num_waveforms)]
        generator = per_row or state.generator
        draws = [
            randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype) for _ in range(solver.steps)
        ]
        return torch.stack(draws)


def apply_guidance(noise_pred: torch.Tensor, state: GenerationState) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (text - uncond)``. With per-prompt scales (a server batch), each
    prompt's rows get the same element-wise operations as that prompt alone, so its result does not change."""
    uncond, text = noise_pred.chunk(2)
    scales = state.item_guidance_scales
    if not scales or len(set(scales)) == 1:
        return uncond + (scales[0] if scales else state.guidance_scale) * (text - uncond)
    n = state.num_waveforms
    return torch.cat([u + scale * (t - u) for scale, u, t in zip(scales, uncond.split(n), text.split(n), strict=True)])


def _after_step(callback, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' ``callback_on_step_end`` convention: the callback may return new latents."""
    returned = callback(step, timestep, {"latents": latents})
    return returned.get("latents", latents) if returned else latents


def store_geometry(store, audio_length_s: float | None, length_bucket_s: float | None = None) -> AudioGeometry:
    """The geometry of a request from a checkpoint's component configs (no weights needed)."""
    return audio_geometry(
        audio_length_s,
        store.config("vocoder"),
        store.config("vae"),
        store.config("unet"),
        length_bucket_s=length_bucket_s,
    )
