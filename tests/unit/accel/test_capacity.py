"""The memory check before loading: a call its device cannot hold is refused naming the setting to change, and one
that runs out anyway fails in one line (exit code 7)."""

from __future__ import annotations

import pytest

from audioldm2_fast.accel import capacity
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.generator import check_requests, requests_of
from audioldm2_fast.runtime.errors import ConfigError, OutOfMemory

MIB = 2**20


def _refusal(monkeypatch, capacity_bytes: int, *overrides: str) -> ConfigError | None:
    monkeypatch.setattr(capacity, "device_capacity_bytes", lambda device: capacity_bytes)
    cfg = compose_config(["checkpoint=tiny", *overrides])
    try:
        check_requests(cfg, requests_of(cfg))
    except ConfigError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["prompt=rain", "audio_length_s=600"], "audio_length_s"),
        (["prompt=rain", "audio_length_s=10", "num_waveforms=64"], "num_waveforms"),
        (["prompt=[" + ",".join(f"p{k}" for k in range(64)) + "]", "audio_length_s=10"], "prompt"),
    ],
)
def test_the_refusal_names_what_made_the_call_too_big(monkeypatch, overrides, key):
    """With 48 MiB: 600 s does not fit even alone; 10 s fits once, not 64 times, as waveforms or as prompts."""
    exc = _refusal(monkeypatch, 48 * MIB, *overrides)
    assert exc is not None and exc.key == key, exc
    assert "which has 48 MiB" in str(exc)
    assert _refusal(monkeypatch, 64 * 2**30, *overrides) is None  # the same call on a bigger machine


def test_a_call_near_the_capacity_is_traced_and_one_far_below_is_not(monkeypatch):
    traced = []
    real = capacity.estimate_peak_bytes
    monkeypatch.setattr(capacity, "estimate_peak_bytes", lambda *a: traced.append(1) or real(*a))
    assert _refusal(monkeypatch, 64 * 2**30, "prompt=rain", "audio_length_s=10") is None
    assert traced == []  # a few MiB of tensors against 64 GiB: no trace needed
    exc = _refusal(monkeypatch, 200 * MIB, "prompt=rain", "audio_length_s=150")
    assert traced and exc is not None and "needs an estimated" in str(exc) and "which has 200 MiB" in str(exc)


def test_memory_settings_count(monkeypatch):
    """The least bytes follow the sub-batch settings: one waveform at a time, 64 candidates need less at once."""
    args = ("prompt=rain", "audio_length_s=30", "num_waveforms=64")
    exc = _refusal(monkeypatch, 400 * MIB, *args)
    assert exc is not None and exc.key == "num_waveforms"
    assert _refusal(monkeypatch, 400 * MIB, *args, "memory.decode_batch_size=1", "memory.unet_batch_size=1") is None


def test_running_out_of_cpu_memory_is_one_line_with_exit_code_7(make_generator, tmp_path, monkeypatch):
    from support import HELPERS

    monkeypatch.syspath_prepend(str(HELPERS))
    gen = make_generator("prompt=rain", "stages.vocoder.impl=custom_stages:CpuAllocationFailureVocoder")
    with pytest.raises(OutOfMemory) as info:
        gen.generate()
    assert info.value.exit_code == 7 and "stage vocoder ran out of memory on cpu" in str(info.value)
    assert "\n" not in str(info.value) and "audio_length_s" in str(info.value)


def test_the_host_memory_is_all_the_machine_has():
    assert capacity._host_memory_bytes() is None or capacity._host_memory_bytes() > 2**28
