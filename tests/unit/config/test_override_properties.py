"""Property-based: any override set is either refused in one line with the package's own error, or accepted and
then runs on the tiny checkpoint. Nothing else (a traceback from Hydra, OmegaConf, torch, ...) is allowed.

Groups come from the real config tree. Compile modes that invoke inductor, and experiments that select one, are
left out of the valid picks: compiling alone takes minutes on a CPU (their validation is covered by
test_combinations.py). Every example sets a short length and few steps, so an accepted set runs in about a second.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from audioldm2_fast.cli import check_overrides
from audioldm2_fast.config.paths import config_groups
from audioldm2_fast.generator import Generator
from audioldm2_fast.runtime.errors import Audioldm2FastError

SLOW_OPTIONS = {
    "compile": {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"},
    "experiment": {"seed/compile"},
    "checkpoint": {"audioldm2", "audioldm2-large", "audioldm2-music"},  # not cached: refused, but tried below
}
STAGES = ["text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "ranker", "writer"]
ODD_TEXT = st.lists(
    st.sampled_from(list("ab z,'\"\\$={}[]()~+-:") + ["\x00", "\x07", "\n", "é", "مطر", "🌧️", "\u200f"]),
    max_size=12,
).map("".join)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


Pair = tuple[st.SearchStrategy, st.SearchStrategy]  # (valid values, invalid values)


def _group_values(group: str, options: list[str]) -> Pair:
    if group == "checkpoint":
        return st.just("tiny"), st.sampled_from(["local", "nope", *sorted(SLOW_OPTIONS["checkpoint"])])
    valid = [o for o in options if o not in SLOW_OPTIONS.get(group, set())]
    return st.sampled_from(valid), st.sampled_from(["nope", "../config"])


INVALID = st.sampled_from(["abc", "nan", "inf", "-inf", "-1", "0", "[]", "{a:1}", "null", "true", "1e400"])
SCALARS: dict[str, Pair] = {
    "seed": (st.integers(0, 2**63 - 1).map(str), st.sampled_from(["-1", str(2**63), "1.5", "x"])),
    "guidance_scale": (st.floats(0, 10).map(repr), INVALID),
    "eta": (st.floats(0, 1).map(repr), INVALID),
    "max_new_tokens": (st.integers(1, 8).map(str), INVALID),
    "negative_prompt": (st.sampled_from(["null", "noise", "'low quality, hum'"]), ODD_TEXT.map(_quote)),
    "device": (st.sampled_from(["cpu", "auto", "cuda", "mps"]), st.sampled_from(["gpu", "cuda:7", "tpu"])),
    "progress": (st.booleans().map(str), st.just("maybe")),
    "output.format": (st.sampled_from(["wav", "flac", "ogg"]), st.sampled_from(["mp3", "WAV", "null"])),
    "output.subtype": (st.sampled_from(["null", "FLOAT", "PCM_16", "PCM_24", "VORBIS"]), st.just("bogus")),
    "output.name_max_length": (st.integers(8, 80).map(str), INVALID),
    "checkpoint.allow_pickle": (st.sampled_from(["false", "true"]), st.just("yes")),
    **{f"stages.{s}.dtype": (st.sampled_from(["null", "fp32", "bf16", "fp16"]), st.just("fp64")) for s in STAGES},
    **{f"stages.{s}.device": (st.sampled_from(["null", "cpu", "cuda"]), st.just("tpu")) for s in STAGES},
}
# Always set, to cheap values when valid, so that an accepted set runs in about a second.
ALWAYS: dict[str, Pair] = {
    "prompt": (st.sampled_from(["rain", "[rain,wind]", "'🌧️ مطر'"]), ODD_TEXT.map(_quote)),
    "steps": (st.integers(1, 3).map(str), INVALID),
    "audio_length_s": (st.floats(0.05, 0.5).map(lambda x: repr(round(x, 3))), INVALID),
    "num_waveforms": (st.integers(1, 2).map(str), INVALID),
}
EXTRA = ["unknown_key=1", "+added=1", "output.colour=red", "~seed", "prompt", "seed=", "'a=b"]


@st.composite
def override_sets(draw) -> list[str]:
    """Half the sets draw only valid values (some combinations are still refused on this machine); the others draw
    an invalid value for each key with probability 1/4, and maybe a malformed override."""
    mixed = draw(st.booleans())

    def value(pair: Pair) -> str:
        invalid = mixed and draw(st.integers(0, 3)) == 0
        return draw(pair[1] if invalid else pair[0])

    groups = config_groups()
    chosen = draw(st.lists(st.sampled_from(sorted(groups)), max_size=4, unique=True))
    overrides = ["checkpoint=tiny"] + [f"{g}={value(_group_values(g, groups[g]))}" for g in chosen]
    overrides += [f"{key}={value(pair)}" for key, pair in ALWAYS.items()]
    keys = draw(st.lists(st.sampled_from(sorted(SCALARS)), max_size=4, unique=True))
    overrides += [f"{key}={value(SCALARS[key])}" for key in keys]
    if mixed and draw(st.booleans()):
        overrides.append(draw(st.sampled_from(EXTRA)))
    return overrides


def test_any_override_set_is_refused_in_one_line_or_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcomes = {"refused": 0, "ran": 0}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
    @given(override_sets())
    def check(overrides: list[str]) -> None:
        try:
            cfg = check_overrides(overrides)
        except Audioldm2FastError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Traceback" not in message, message
            outcomes["refused"] += 1
            event(f"refused: {type(exc).__name__}")
            return
        assert cfg is not None
        cfg.output.dir = str(tmp_path / f"run{outcomes['ran']}")
        gen = Generator(cfg)
        result = gen.generate()
        prompts = len(result.prompts)
        assert result.waveforms.shape[0] == prompts * cfg.num_waveforms
        written = len(result.records) if "writer" in cfg.pipeline.chain else 0
        assert written + len(result.failed) == (result.waveforms.shape[0] if "writer" in cfg.pipeline.chain else 0)
        assert all(math.isfinite(v) for v in result.timings.values())
        outcomes["ran"] += 1
        event("ran")

    check()
    # Both outcomes must actually occur, or the property says little.
    assert outcomes["ran"] >= 3 and outcomes["refused"] >= 10, outcomes
