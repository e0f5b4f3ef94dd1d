"""Solvers as tensors: a scheduler's whole run precomputed, so that a denoising step is a pure function.

A diffusers scheduler keeps Python state (its step index, its last model outputs) and indexes its schedule on every
step. For DPM-Solver++ (multistep, orders 1 and 2), DDIM and Euler, :func:`precompute` reads the schedule once,
after ``set_timesteps``, into a table of per-step coefficients on the device, with each step's solver order as plain
data. :meth:`Solver.step` is then a function of tensors: no scheduler object, no state but the tensors passed in and
out, no host synchronisation and no host-to-device copy. The coefficients are computed by the scheduler's own
formulas in the scheduler's own float32 arithmetic, and applied in the same order of operations, so in float32 the
samples equal the scheduler's (``tests/unit/stages/test_fast_path.py``: steps 1, 2, 5, 20 and 25, with and without
guidance). In half precision the update runs in float32 on the upcast model output (diffusers runs part of it in the
model's dtype), and the result takes the latents' dtype.

Anything else (other schedulers, thresholding, clipping, learned variances, third order, Euler with churn) returns
None from :func:`precompute`, and the denoiser keeps the scheduler object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: The scheduler classes :func:`precompute` can turn into tables (the rest keep the scheduler object).
PRECOMPUTED = ("DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler")
PREDICTIONS = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Solver:
    """One scheduler's run as data: the UNet's timesteps and each step's coefficients, on the device.

    ``kind`` is ``dpmpp``, ``ddim`` or ``euler``; ``orders`` gives the DPM-Solver order of each step (1 elsewhere);
    ``stochastic`` says the update adds noise (DDIM with eta > 0), drawn before the loop and passed to :meth:`step`.
    """

    kind: str
    prediction: str
    timesteps: torch.Tensor  # (steps,) as the scheduler gives them to the UNet
    coeffs: torch.Tensor  # (steps, k) float32
    orders: tuple[int, ...]
    stochastic: bool = False
    heun: bool = False  # DPM-Solver++ second order with the Heun correction instead of the midpoint one

    @property
    def steps(self) -> int:
        return len(self.orders)

    def scale_input(self, i: int, sample: torch.Tensor) -> torch.Tensor:
        """The scheduler's ``scale_model_input`` at step ``i`` (Euler divides by sqrt(sigma^2 + 1))."""
        if self.kind != "euler":
            return sample
        return (sample.float() / self.coeffs[i, 0]).to(sample.dtype)

    def step(
        self,
        i: int,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        previous: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step ``i``: (the next sample in ``sample``'s dtype, what the next step needs of this one).

        ``previous`` is what the last step returned second (DPM-Solver's data prediction); ``noise`` is this step's
        noise for a stochastic solver.
        """
        dtype = sample.dtype
        x, out, c = sample.float(), model_output.float(), self.coeffs[i]
        if self.kind == "dpmpp":
            # convert_model_output: the data prediction x0 from the model output.
            x0 = (x - c[1] * out) / c[0] if self.prediction == "epsilon" else c[0] * x - c[1] * out
            if self.orders[i] == 1 or previous is None:
                nxt = c[2] * x - c[3] * x0
            else:
                d1 = c[5] * (x0 - previous)
                nxt = c[2] * x - c[3] * x0 - c[4] * d1
            return nxt.to(dtype), x0
        if self.kind == "ddim":
            if self.prediction == "epsilon":
                x0 = (x - c[0] * out) / c[1]
                eps = out
            else:
                x0 = c[1] * x - c[0] * out
                eps = c[1] * out + c[0] * x
            nxt = c[3] * x0 + c[2] * eps
            if self.stochastic:
                nxt = nxt + c[4] * noise.float()
            return nxt.to(dtype), None
        # euler
        x0 = x - c[1] * out if self.prediction == "epsilon" else out * c[3] + x / c[4]
        derivative = (x - x0) / c[1]
        return (x + derivative * c[2]).to(dtype), None


def precompute(scheduler: Any, device: torch.device | str, eta: float = 0.0) -> Solver | None:
    """The table of a scheduler on which ``set_timesteps`` has run, or None when it is not one of ours to replace."""
    name = type(scheduler).__name__
    config = scheduler.config
    if name not in PRECOMPUTED or config.get("prediction_type", "epsilon") not in PREDICTIONS:
        return None
    if config.get("thresholding") or config.get("clip_sample") or config.get("variance_type") is not None:
        return None
    timesteps = scheduler.timesteps
    if len(set(timesteps.tolist())) != len(timesteps):  # repeated timesteps: the scheduler's own indexing decides
        return None
    build = {"DPMSolverMultistepScheduler": _dpmpp, "DDIMScheduler": _ddim, "EulerDiscreteScheduler": _euler}[name]
    made = build(scheduler, eta)
    if made is None:
        return None
    kind, rows, orders, extra = made
    coeffs = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in row]) for row in rows])
    return Solver(
        kind=kind,
        prediction=str(config.prediction_type),
        timesteps=timesteps.to(device),
        coeffs=coeffs.to(device),
        orders=tuple(orders),
        **extra,
    )


def _dpmpp(scheduler: Any, eta: float):
    config = scheduler.config
    if (
        config.algorithm_type != "dpmsolver++"
        or config.solver_order not in (1, 2)
        or config.solver_type not in ("midpoint", "heun")
        or config.get("use_flow_sigmas")
    ):
        return None
    sigmas = scheduler.sigmas
    steps = len(scheduler.timesteps)
    to_alpha_sigma = scheduler._sigma_to_alpha_sigma_t
    rows, orders, lower_order_nums = [], [], 0
    zero = torch.tensor(0.0)
    for i in range(steps):
        # As DPMSolverMultistepScheduler.step decides each step's order.
        lower_order_final = (i == steps - 1) and (
            config.euler_at_final or (config.lower_order_final and steps < 15) or config.final_sigmas_type == "zero"
        )
        order = 1 if config.solver_order == 1 or lower_order_nums < 1 or lower_order_final else 2
        lower_order_nums = min(lower_order_nums + 1, config.solver_order)
        alpha_i, sigma_i = to_alpha_sigma(sigmas[i])
        alpha_t, sigma_t = to_alpha_sigma(sigmas[i + 1])
        alpha_s0, sigma_s0 = alpha_i, sigma_i
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        a = sigma_t / sigma_s0
        b = alpha_t * (torch.exp(-h) - 1.0)
        c, r_inv = zero, zero
        if order == 2:
            alpha_s1, sigma_s1 = to_alpha_sigma(sigmas[i - 1])
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            r_inv = 1.0 / r0
            # midpoint: x - b*D0 - 0.5*b*D1; heun: x - b*D0 + e*D1, written as x - b*D0 - (-e)*D1 (exact in IEEE).
            c = 0.5 * b if config.solver_type == "midpoint" else -(alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0))
        rows.append((alpha_i, sigma_i, a, b, c, r_inv))
        orders.append(order)
    return "dpmpp", rows, orders, {"heun": config.solver_type == "heun"}


def _ddim(scheduler: Any, eta: float):
    config = scheduler.config
    steps = scheduler.num_inference_steps
    rows = []
    for t in scheduler.timesteps.tolist():
        prev_t = t - config.num_train_timesteps // steps
        alpha_prod_t = scheduler.alphas_cumprod[t]
        alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        variance = scheduler._get_variance(t, prev_t)
        std_dev_t = eta * variance ** (0.5)
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5)
        rows.append((beta_prod_t ** (0.5), alpha_prod_t ** (0.5), direction, alpha_prod_t_prev ** (0.5), std_dev_t))
    return "ddim", rows, [1] * len(rows), {"stochastic": eta > 0}


def _euler(scheduler: Any, eta: float):
    sigmas = scheduler.sigmas
    rows = []
    for i in range(len(scheduler.timesteps)):
        sigma = sigmas[i]
        sigma_hat = sigma * (0.0 + 1)  # gamma is 0 without churn, as the stock pipeline runs it
        rows.append(
            (
                (sigma**2 + 1) ** 0.5,
                sigma_hat,
                sigmas[i + 1] - sigma_hat,
                -sigma / (sigma**2 + 1) ** 0.5,
                sigma**2 + 1,
            )
        )
    return "euler", rows, [1] * len(rows), {}
