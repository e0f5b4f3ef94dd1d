"""Requests to the server are checked by the command line's own validators: same messages, naming the field."""

from __future__ import annotations

import pytest
from support import FAST

from audioldm2_fast.cli import check_overrides
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.requests import RANDOM_SEEDS, check_server, is_loopback, parse_request
from audioldm2_fast.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def cfg():
    return compose_config([*FAST, "task=serve", "server.max_num_waveforms=2"])


def test_defaults_come_from_the_config_and_a_missing_seed_is_drawn(cfg):
    request = parse_request({"prompt": "rain"}, cfg)
    assert (request.prompt, request.steps, request.audio_length_s, request.num_waveforms) == ("rain", 4, 1.0, 1)
    assert (request.guidance_scale, request.format, request.negative_prompt) == (3.5, "wav", None)
    assert 0 <= request.seed < RANDOM_SEEDS
    given = parse_request({"prompt": "rain", "seed": 5, "steps": 3, "format": "flac", "negative_prompt": ""}, cfg)
    assert (given.seed, given.steps, given.format, given.negative_prompt) == (5, 3, "flac", "")


@pytest.mark.parametrize(
    ("key", "value"),
    [("steps", 0), ("steps", 2.5), ("seed", -3), ("guidance_scale", "x"), ("audio_length_s", 0), ("prompt", " ")],
)
def test_a_bad_value_gets_the_command_lines_message(cfg, key, value):
    body = {"prompt": "rain", key: value}
    with pytest.raises(ConfigError) as served:
        parse_request(body, cfg)
    override = f"{key}='{value}'" if isinstance(value, str) else f"{key}={value}"
    with pytest.raises(ConfigError) as cli:
        check_overrides(
            ["checkpoint=tiny", "prompt=rain", override] if key != "prompt" else ["checkpoint=tiny", override]
        )
    assert served.value.key == key and str(served.value) == str(cli.value)


def test_text_is_kept_as_given_never_interpolated(cfg):
    assert parse_request({"prompt": "${oc.env:HOME}"}, cfg).prompt == "${oc.env:HOME}"
    assert parse_request({"prompt": "rain", "negative_prompt": "${now:%H}"}, cfg).negative_prompt == "${now:%H}"


def test_limits_name_the_field_and_the_setting(cfg):
    with pytest.raises(ConfigError, match=r"^num_waveforms: 3 is over .*server.max_num_waveforms"):
        parse_request({"prompt": "rain", "num_waveforms": 3}, cfg)
    with pytest.raises(ConfigError, match=r"^prompt: is 1001 characters long"):
        parse_request({"prompt": "r" * 1001}, cfg)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("192.168.1.20", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_host_needs_a_key_from_the_config_or_the_environment(cfg, monkeypatch):
    public = compose_config([*FAST, "task=serve", "server.host=0.0.0.0"])
    monkeypatch.delenv("AUDIOLDM2_FAST_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        check_server(public)
    assert info.value.key == "server.api_key" and "AUDIOLDM2_FAST_API_KEY" in str(info.value)
    monkeypatch.setenv("AUDIOLDM2_FAST_API_KEY", "k")
    assert check_server(public).host == "0.0.0.0"
    keyed = compose_config([*FAST, "task=serve", "server.host=0.0.0.0", "server.api_key=' '"])
    with pytest.raises(ConfigError, match="server.api_key: must not be empty"):
        check_server(keyed)
