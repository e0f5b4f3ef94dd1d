"""Every combination of config group options is either accepted or refused with a message, before loading.

The walk composes each group option once and swaps the nodes into one config, then validates. It runs on this
machine's CPU profile and on described GPUs (an H100 and a V100), since validation asks a device probe.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import pytest
import torch
from support import H100, V100, probe_with

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.paths import config_groups
from audioldm2_fast.config.validate import validate_config
from audioldm2_fast.runtime.errors import ConfigError

WALKED = ["checkpoint", "scheduler", "precision", "attention", "compile", "offload", "graphs"]
#: Groups that no rule relates to the others (shown by the independence tests below), walked on their own: each
#: would only multiply the cross product's time.
INDEPENDENT = ("checkpoint", "scheduler")


def _options(groups: list[str]) -> dict[str, list[tuple[str, object]]]:
    names = config_groups()
    return {g: [(o, compose_config([f"{g}={o}"])[g]) for o in names[g]] for g in groups}


def _walk(groups: list[str], device: str, probe) -> tuple[Counter, int]:
    options = _options(groups)
    cfg = copy.deepcopy(compose_config(["checkpoint=tiny", "prompt=x", f"device={device}"]))
    outcomes: Counter = Counter()
    accepted = 0
    for combo in itertools.product(*options.values()):
        for group, (_, node) in zip(groups, combo, strict=True):
            cfg[group] = node
        try:
            validate_config(cfg, probe)
            accepted += 1
        except ConfigError as exc:
            message = str(exc)
            assert message and "\n" not in message, (combo, message)
            outcomes[message.split(":")[0]] += 1
        # Any other exception fails the test: it is neither an acceptance nor a reasoned refusal.
    return outcomes, accepted


def test_group_options_cover_the_issue():
    names = config_groups()
    assert set(names["precision"]) == {"fp32", "fp16", "bf16", "auto"}
    assert set(names["attention"]) == {"sdpa", "math", "flash", "efficient", "cudnn", "sliced", "xformers"}
    assert set(names["compile"]) == {
        "none",
        "auto",
        "default",
        "reduce-overhead",
        "max-autotune",
        "max-autotune-no-cudagraphs",
    }
    assert set(names["offload"]) == {"none", "model", "sequential", "group"}


@pytest.mark.slow
def test_whole_cross_product_on_cpu():
    groups = [g for g in WALKED if g not in INDEPENDENT]  # see the independence tests
    outcomes, accepted = _walk(groups, "cpu", probe_with(None))
    total = accepted + sum(outcomes.values())
    assert total == 4 * 7 * 6 * 4 * 4
    assert accepted > 0
    # fp16 on the CPU, CUDA-only kernels and offload without an accelerator are among the refusals.
    assert {"precision", "attention", "offload"} <= set(outcomes)


OTHERS = [
    ["precision=fp32"],
    ["precision=fp16", "attention=flash", "compile=reduce-overhead", "offload=model"],
    ["scheduler=pndm", "attention=sliced", "compile=default"],
    ["precision=bf16", "graphs=cuda", "compile=auto"],
    ["graphs=cuda-inductor", "offload=sequential"],
]


@pytest.mark.parametrize("group", INDEPENDENT)
def test_walked_alone_groups_are_independent_of_the_others(group):
    """No rule relates the checkpoint or the scheduler to the other groups: each of their options gets the same
    verdict whatever the other groups say (refused for its own reason, or as the rest of the config is)."""
    names = config_groups()[group]
    for gpu, device in [(None, "cpu"), (H100, "cuda")]:
        for other in OTHERS:
            other = [o for o in other if not o.startswith(f"{group}=")]
            base = _verdict(["checkpoint=tiny", *other], device, gpu)
            for name in names:
                verdict = _verdict(["checkpoint=tiny", f"{group}={name}", *other], device, gpu)
                if group == "checkpoint" and name == "local":  # needs checkpoint.path: refused for that alone
                    assert verdict == "checkpoint.path"
                elif group == "scheduler" and name == "dpm_sde" and verdict != base:  # its own rule: torchsde
                    assert verdict == "scheduler"
                else:
                    assert verdict == base, (group, name, other, device)


def _verdict(overrides: list[str], device: str, gpu) -> str:
    try:
        validate_config(compose_config(["prompt=x", f"device={device}", *overrides]), probe_with(gpu))
        return "accepted"
    except ConfigError as exc:
        return exc.key


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [H100, V100], ids=["H100", "V100"])
def test_cross_product_on_described_gpus(gpu):
    groups = [g for g in WALKED if g not in INDEPENDENT]  # they add no device rules
    outcomes, accepted = _walk(groups, "cuda", probe_with(gpu))
    assert accepted + sum(outcomes.values()) == 4 * 7 * 6 * 4 * 4
    assert accepted > 0
    if gpu is V100:
        assert outcomes["precision"] > 0  # bf16 refused on a GPU without it


REFUSED = [
    # (overrides, device, gpu, text the reason must contain)
    (["precision=fp16"], "cpu", None, "fp16 is not supported on the CPU"),
    (["attention=flash", "precision=fp32"], "cuda", H100, "needs fp16 or bf16"),
    (["attention=flash", "precision=fp16"], "cuda", V100, "sm80"),
    (["attention=efficient"], "cpu", None, "needs a CUDA GPU"),
    (["compile=reduce-overhead", "offload=sequential"], "cuda", H100, "CUDA graphs"),
    (["compile=max-autotune", "offload=group"], "cuda", H100, "CUDA graphs"),
    (["compile=default", "compile.fullgraph=true", "offload=sequential"], "cuda", H100, "fullgraph"),
    (["precision=bf16"], "cuda", V100, "no bf16"),
    (["offload=model"], "cpu", None, "accelerator"),
    (["offload=group", "offload.use_stream=true", "stages.denoiser.device=cuda"], "cpu", H100, None),
]


@pytest.mark.parametrize("overrides,device,gpu,reason", REFUSED, ids=[" ".join(r[0]) + f" {r[1]}" for r in REFUSED])
def test_combinations_that_cannot_work_are_refused_with_the_reason(overrides, device, gpu, reason):
    cfg = compose_config(["checkpoint=tiny", "prompt=x", f"device={device}", *overrides])
    if reason is None:  # a mixed placement that works: group offload for the stage on the GPU
        validate_config(cfg, probe_with(gpu))
        return
    with pytest.raises(ConfigError, match=reason):
        validate_config(cfg, probe_with(gpu))


def test_the_seed_recipe_is_accepted_on_an_h100():
    cfg = compose_config(
        [
            "checkpoint=tiny",
            "prompt=x",
            "device=cuda",
            "precision=fp16",
            "attention=sdpa",
            "compile=reduce-overhead",
            "scheduler=dpmpp_2m",
            "steps=20",
            "offload=model",
        ]
    )
    validate_config(cfg, probe_with(H100))


LADDER = {
    "baseline": dict(precision="fp32", scheduler="ddim", attention="math", compile="none", steps=200),
    "sdpa": dict(precision="fp32", scheduler="ddim", attention="sdpa", compile="none", steps=200),
    "fp16": dict(precision="fp16", scheduler="ddim", attention="sdpa", compile="none", steps=200),
    "compile": dict(precision="fp16", scheduler="ddim", attention="sdpa", compile="reduce-overhead", steps=200),
    "dpm20": dict(precision="fp16", scheduler="dpmpp_2m", attention="sdpa", compile="reduce-overhead", steps=20),
    "long_offload": dict(
        precision="fp16",
        scheduler="dpmpp_2m",
        compile="none",
        offload="model",
        steps=20,
        num_waveforms=4,
        audio_length_s=150.0,
    ),
}


def test_fastest_resolves_per_device(make_generator):
    from audioldm2_fast.accel.compile import effective_mode
    from audioldm2_fast.accel.graphs import captures_on
    from audioldm2_fast.stages.base import stage_placement

    cfg = compose_config(["experiment=fastest", "checkpoint=tiny", "prompt=x", "device=cuda"])
    validated = validate_config(cfg, probe_with(H100))
    device, dtype = stage_placement(cfg, "denoiser", probe_with(H100))
    assert str(dtype) == "torch.bfloat16" and effective_mode(cfg.compile.mode, device.type) == "none"
    graphs = validated.optimizations["graphs"]  # every stage captured, over Inductor's kernels
    assert captures_on(graphs.mode, device.type) and graphs.inductor
    assert set(graphs.stages) == {"text_encoders", "prior", "denoiser", "vae_decoder", "vocoder"}
    assert str(stage_placement(cfg, "vocoder", probe_with(H100))[1]) == "torch.float32"
    assert str(stage_placement(cfg, "denoiser", probe_with(V100))[1]) == "torch.float16"
    assert cfg.scheduler.name == "dpmpp_2m" and cfg.steps == 20
    gen = make_generator("experiment=fastest", "prompt=x", "steps=2")  # on this CPU: fp32, eager
    denoiser = gen.stages[2]
    assert denoiser.dtype == torch.float32 and type(denoiser.modules["unet"]).__name__ != "OptimizedModule"
    assert "denoise" not in vars(denoiser)  # graphs=auto captures nothing on the CPU


@pytest.mark.parametrize("rung", list(LADDER))
def test_seed_ladder_experiments(rung):
    cfg = compose_config([f"experiment=seed/{rung}", "checkpoint=tiny", "device=cuda"])
    field = {"precision": "name", "scheduler": "name", "attention": "backend", "compile": "mode", "offload": "mode"}
    for key, value in LADDER[rung].items():
        actual = cfg[key][field[key]] if key in field else cfg[key]
        assert actual == value, (rung, key, actual)
    assert cfg.prompt.startswith("The sound of Brazilian samba drums")
    assert (cfg.negative_prompt is None) == (rung == "baseline")
    if rung in ("compile", "dpm20"):
        assert cfg.compile.fullgraph is True and list(cfg.compile.stages) == ["denoiser"]
    validate_config(cfg, probe_with(H100))
