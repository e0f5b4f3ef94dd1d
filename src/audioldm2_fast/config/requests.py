"""``task=serve``: what a request may set, checked with the command line's own validators, and the server's settings.

A request is a JSON object of request keys. Each value is checked against the root schema's field of the same name
(types and bounds from ``schema.Config``), prompts with ``prompts.py``, and the combination with the rules the command
line runs (``rule_steps``, ``rule_output``), so a request is refused with the message the command line would print
for the same value, naming the field. Text from a request never passes through OmegaConf, whose interpolations
(``${oc.env:...}``) would otherwise read the server's environment into a prompt or an error message.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..runtime.devices import probe_device
from ..runtime.errors import ConfigError
from .fields import check_node, check_value
from .optimization import Plan
from .prompts import negative_prompt_list, prompt_list
from .rules import rule_output, rule_steps
from .schema import Config, OutputConfig, ServerConfig

#: The environment variable that holds the API key when ``server.api_key`` is null.
API_KEY_ENV = "AUDIOLDM2_FAST_API_KEY"
#: What a request body may set, besides the prompt: these are the root config keys of the same name.
NUMBER_KEYS = ("seed", "steps", "guidance_scale", "audio_length_s", "num_waveforms")
REQUEST_KEYS = ("prompt", "negative_prompt", *NUMBER_KEYS, "format", "id")
#: A client's own request id (used in file names and ``/v1/progress/<id>``).
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: Seeds drawn for requests that give none (reported back, so the result can be made again).
RANDOM_SEEDS = 2**32


@dataclass(frozen=True)
class Request:
    """One validated request: every value typed and within the server's limits."""

    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    audio_length_s: float | None  # None: the server's default length
    num_waveforms: int
    format: str
    id: str | None

    def settings(self) -> dict[str, Any]:
        """The request's values as JSON (what responses and the page's history show)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "audio_length_s": self.audio_length_s,
            "num_waveforms": self.num_waveforms,
            "format": self.format,
        }


def server_settings(cfg: DictConfig) -> ServerConfig:
    return check_node(cfg.server, ServerConfig, "server")


def server_api_key(cfg: DictConfig) -> str | None:
    """``server.api_key``, else ``$AUDIOLDM2_FAST_API_KEY``, else None."""
    key = cfg.server.get("api_key")
    return key if key is not None else os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_steps(cfg: DictConfig) -> int:
    return int(cfg.steps if cfg.get("steps") is not None else cfg.scheduler.default_steps)


def parse_request(body: Any, cfg: DictConfig, server: ServerConfig | None = None) -> Request:
    """Check a request body against the command line's validators and the server's limits; ConfigError names the
    field. ``cfg`` is the server's config: it gives the defaults of the keys a request leaves out."""
    server = server or server_settings(cfg)
    if not isinstance(body, dict):
        raise ConfigError("", f"the body must be a JSON object of request keys (got {type(body).__name__})")
    for key in body:
        if key not in REQUEST_KEYS:
            raise ConfigError(str(key), f"unknown request key; a request may set {', '.join(REQUEST_KEYS)}")
    if body.get("prompt") is None:
        raise ConfigError("prompt", "required")
    if not isinstance(body["prompt"], str):
        raise ConfigError("prompt", f"must be a string: one prompt per request (got {type(body['prompt']).__name__})")
    (prompt,) = prompt_list(body["prompt"])
    negative = body.get("negative_prompt", cfg.get("negative_prompt"))
    if negative is not None and not isinstance(negative, str):
        raise ConfigError("negative_prompt", f"must be a string (got {type(negative).__name__})")
    negative = (negative_prompt_list(negative, 1) or [None])[0]
    for key, text in (("prompt", prompt), ("negative_prompt", negative or "")):
        if len(text) > server.max_prompt_chars:
            raise ConfigError(key, f"is {len(text)} characters long; this server's limit is {server.max_prompt_chars}")

    values = {key: cfg.get(key) for key in NUMBER_KEYS}
    for key in NUMBER_KEYS:
        if body.get(key) is not None:
            values[key] = check_value(Config, key, body[key])
    if body.get("seed") is None:
        values["seed"] = secrets.randbelow(RANDOM_SEEDS)
    fmt = check_value(OutputConfig, "format", body.get("format", cfg.output.format), "format")
    request_id = body.get("id")
    if request_id is not None and not (isinstance(request_id, str) and ID_PATTERN.fullmatch(request_id)):
        raise ConfigError("id", "must be 8 to 64 of A-Z a-z 0-9 _ -")

    # The command line's cross-key rules, on a config that holds only values already typed above.
    subtype = cfg.output.get("subtype") if fmt == cfg.output.format else None
    merged = OmegaConf.merge(cfg, {**values, "output": {"format": fmt, "subtype": subtype}})
    plan = Plan(cfg=merged, probe=probe_device, placements={}, optimizations={})
    try:
        rule_steps(plan)
        rule_output(plan)
    except ConfigError as exc:
        raise ConfigError("format" if exc.key.startswith("output.") else exc.key, exc.problem) from None

    steps = default_steps(merged)
    limits = (
        ("audio_length_s", values["audio_length_s"], server.max_audio_length_s, "max_audio_length_s"),
        ("num_waveforms", values["num_waveforms"], server.max_num_waveforms, "max_num_waveforms"),
        ("steps", steps, server.max_steps, "max_steps"),
    )
    for key, value, limit, setting in limits:
        if value is not None and value > limit:
            raise ConfigError(key, f"{value:g} is over this server's limit of {limit:g} (server.{setting})")
    return Request(
        prompt=prompt,
        negative_prompt=negative,
        seed=int(values["seed"]),
        steps=steps,
        guidance_scale=float(values["guidance_scale"]),
        audio_length_s=None if values["audio_length_s"] is None else float(values["audio_length_s"]),
        num_waveforms=int(values["num_waveforms"]),
        format=fmt,
        id=request_id,
    )


def check_server(cfg: DictConfig) -> ServerConfig:
    """``task=serve``'s own rules, before anything loads: an API key off loopback, no prompts file, and the defaults
    and every warm-up shape within the limits (each checked as a request)."""
    server = server_settings(cfg)
    if cfg.get("prompts_file") is not None:
        raise ConfigError("prompts_file", "task=serve takes its prompts from requests, not from a file")
    key = server_api_key(cfg)
    if key is not None and not key.strip():
        raise ConfigError("server.api_key", "must not be empty")
    if key is None and not is_loopback(server.host):
        raise ConfigError(
            "server.api_key",
            f"server.host={server.host} is not a loopback address, so requests need an API key: "
            f"set ${API_KEY_ENV} (or server.api_key)",
        )
    for i, shape in enumerate(server.warmup):
        try:
            parse_request({"prompt": "warm-up", "seed": 0, **shape}, cfg, server)
        except ConfigError as exc:
            raise ConfigError(f"server.warmup[{i}].{exc.key}", exc.problem) from None
    return server
