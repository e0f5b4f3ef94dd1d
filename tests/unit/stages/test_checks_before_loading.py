"""What the stages bound before anything loads: the scheduler judged by a dry run of its own schedule, GPT-2's
positions to the token, and the shortest audio; and the prior's own check for prompts that come with each call."""

from __future__ import annotations

import json

import pytest

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.fields import check_node
from audioldm2_fast.config.paths import config_groups
from audioldm2_fast.config.schema import SchedulerConfig
from audioldm2_fast.runtime.errors import CheckpointError, ConfigError
from audioldm2_fast.stages.prior import check_positions, positions_needed
from audioldm2_fast.stages.schedulers import check_scheduler

TINY_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_start": 0.0015, "beta_end": 0.0195,
                  "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1}  # fmt: skip


def _scheduler(option: str, *overrides: str) -> tuple[SchedulerConfig, int]:
    cfg = compose_config(["checkpoint=tiny", f"scheduler={option}", *overrides])
    return check_node(cfg.scheduler, SchedulerConfig, "scheduler"), cfg.scheduler.default_steps


@pytest.mark.parametrize("option", config_groups()["scheduler"])
def test_every_shipped_scheduler_passes_its_dry_run(option, tiny_dir):
    if option == "dpm_sde":
        pytest.importorskip("torchsde")
    scheduler, steps = _scheduler(option)
    config = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    check_scheduler(scheduler, config, steps)  # no false refusal
    check_scheduler(scheduler, config, 1 if scheduler.min_steps <= 1 else scheduler.min_steps)


def test_a_value_the_scheduler_rejects_names_its_key_and_the_checkpoints_own_names_the_file():
    scheduler, steps = _scheduler("dpmpp_2m", "+scheduler.config.solver_order=0")
    with pytest.raises(ConfigError) as info:
        check_scheduler(scheduler, TINY_SCHEDULER, steps)
    assert info.value.key == "scheduler.config.solver_order"
    plain, steps = _scheduler("dpmpp_2m")
    broken = {**TINY_SCHEDULER, "beta_schedule": "nonsense"}
    with pytest.raises(CheckpointError, match="scheduler_config.json: DPMSolverMultistepScheduler cannot run"):
        check_scheduler(plain, broken, steps, where="/ckpt/scheduler/scheduler_config.json")


def test_positions_are_counted_exactly():
    """t5 tokens + CLAP's embedding + 4 start/end tokens + max_new_tokens - 1 (the last state is not fed back)."""
    assert positions_needed(2, 122) == 128
    check_positions({"n_positions": 128}, 2, 122)
    with pytest.raises(ConfigError, match="use at most 122") as info:
        check_positions({"n_positions": 128}, 2, 123)
    assert info.value.key == "max_new_tokens"


@pytest.fixture(scope="module")
def gen():
    from audioldm2_fast import Generator

    with Generator.from_config(checkpoint="tiny", steps=1, audio_length_s=0.32, write=False) as generator:
        yield generator


def test_the_bound_is_the_one_gpt2_runs_into(gen, monkeypatch):
    """At the bound, GPT-2 runs; one past it, without the check, GPT-2 itself fails indexing its positions."""
    from audioldm2_fast.stages import prior

    gen(prompt="rain", max_new_tokens=122)  # "rain" is 2 T5 tokens on tiny, whose GPT-2 has 128 positions
    with pytest.raises(ConfigError):
        gen(prompt="rain", max_new_tokens=123)
    monkeypatch.setattr(prior, "check_positions", lambda *args: None)
    with pytest.raises(IndexError):
        gen(prompt="rain", max_new_tokens=123)


def test_prompts_given_per_call_are_checked_by_the_prior(gen):
    gen(prompt="rain", max_new_tokens=60)  # short: fits
    with pytest.raises(ConfigError) as info:
        gen(prompt="rain on a tin roof " * 20, max_new_tokens=60)  # 77 T5 tokens + 5 + 59 > 128
    assert info.value.key == "max_new_tokens" and "positions" in str(info.value)
