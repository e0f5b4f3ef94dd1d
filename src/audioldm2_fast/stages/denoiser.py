"""The latent diffusion UNet, the scheduler loop and classifier-free guidance."""

from __future__ import annotations

import inspect

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..accel.chunking import run_in_sub_batches
from ..runtime.progress import progress_bar
from .base import Stage
from .geometry import AudioGeometry, audio_geometry
from .registry import register_stage
from .schedulers import build_scheduler
from .state import GenerationState


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


@register_stage("denoiser")
class Denoiser(Stage):
    components = ("unet",)

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
        return audio_geometry(
            audio_length_s,
            self.store.config("vocoder"),
            self.store.config("vae"),
            self.modules["unet"].config,
            length_bucket_s=self.cfg.compile.get("length_bucket_s"),
        )

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

        scheduler = build_scheduler(self.cfg.scheduler, self.store.config("scheduler"))
        scheduler.set_timesteps(state.steps, device=self.device)
        shape = (state.batch_size * n, unet.config.in_channels, *geometry.latent_hw)
        if state.item_generators:  # each item draws its candidates' latents from its own generator
            item_shape = (n, *shape[1:])
            latents = torch.cat(
                [
                    randn_tensor(item_shape, generator=g, device=self.device, dtype=self.dtype)
                    for g in state.item_generators
                ]
            )
        else:
            latents = randn_tensor(shape, generator=state.generator, device=self.device, dtype=self.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(scheduler, state)
        guidance = state.do_classifier_free_guidance
        sub_batch = self.cfg.get("memory", {}).get("unet_batch_size")

        for t in progress_bar(scheduler.timesteps, cfg=self.cfg, desc="denoising", unit="step"):
            model_input = torch.cat([latents] * 2) if guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = predict_noise(unet, model_input, t, cond_gpt2, cond_t5, mask_t5, sub_batch)
            if guidance:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + state.guidance_scale * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        state.latents = latents
        return state
