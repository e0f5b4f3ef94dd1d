"""``audioldm2-fast task=doctor``: what this environment has, and whether it can run the default settings.

Each check prints one line: ``ok``, ``info`` (a fact), ``warn`` (an option that will not work here) or ``FAIL`` (the
default settings cannot run). The command exits with ``EnvironmentProblem.exit_code`` when anything fails. No model
is loaded; the tiny checkpoint is built if it is not cached yet.

Each check imports the libraries it probes itself, so that a missing or broken one becomes a FAIL line of its own
instead of stopping the doctor, and ``task=doctor`` starts as fast as any refusal.
"""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from ..checkpoints.resolve import resolve_checkpoint
from ..config.compose import compose_config
from ..config.validate import validate_config
from ..outputs.provenance import LIBRARIES, installed_version
from ..runtime.errors import Audioldm2FastError, EnvironmentProblem

DIST = "audioldm2-fast"
#: Packages that only some options need: (distribution, what needs it).
OPTIONAL = (
    ("xformers", "attention=xformers"),
    ("torchsde", "scheduler=dpm_sde"),
    ("pyloudnorm", "loudness normalisation"),
)


@dataclass
class Check:
    status: str  # ok | info | warn | FAIL
    name: str
    detail: str


def _requirements() -> dict[str, object]:
    """Runtime requirements of the installed package, by distribution name (extras left out)."""
    try:
        lines = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        lines = _source_tree_requirements()
    reqs = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None:
            reqs[req.name.lower()] = req
    return reqs


def _source_tree_requirements() -> list[str]:
    """``[project].dependencies`` of the checkout this module runs from, when it is used without being installed
    (``PYTHONPATH=src``); empty if there is no such pyproject.toml or no TOML reader (Python 3.10)."""
    try:
        import tomllib
    except ImportError:
        return []
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if not pyproject.is_file():
        return []
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return list(project.get("dependencies", [])) if project.get("name") == DIST else []


def _version(dist: str) -> str | None:
    return installed_version(dist)


def check_versions() -> Iterator[Check]:
    yield Check(
        "ok" if sys.version_info >= (3, 10) else "FAIL", "python", platform.python_version() + " (needs >=3.10)"
    )
    reqs = _requirements()
    names = list(LIBRARIES) + sorted(n for n in reqs if n not in LIBRARIES)
    for name in names:
        installed = _version(name)
        req = reqs.get(name)
        wanted = f" (needs {req.specifier})" if req is not None and str(req.specifier) else ""
        if installed is None:
            yield Check("FAIL" if req is not None else "warn", name, "not installed" + wanted)
            continue
        try:
            ok = req is None or req.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = False
        yield Check("ok" if ok else "FAIL", name, installed + wanted)


def check_devices() -> Iterator[Check]:
    import torch

    yield Check("info", "cpu", f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
            yield Check("info", f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, sm{major}{minor}, {bf16}")
    else:
        built = torch.version.cuda or "none"
        yield Check("info", "cuda", f"no CUDA device (torch built for CUDA {built}); device=auto runs on the CPU")
    mps = getattr(torch.backends, "mps", None)
    yield Check("info", "mps", "available" if mps is not None and mps.is_available() else "not available")


def check_features() -> Iterator[Check]:
    import soundfile as sf
    import torch

    formats = sf.available_formats()
    wav = "WAV" in formats and "FLOAT" in sf.available_subtypes("WAV")
    yield Check("ok" if wav else "FAIL", "libsndfile", f"{sf.__libsndfile_version__}, formats: {', '.join(formats)}")
    for fmt in ("FLAC", "OGG"):
        if fmt not in formats:
            yield Check("warn", f"output.format={fmt.lower()}", "not supported by this libsndfile")
    try:
        from torch.nn.attention import sdpa_kernel  # noqa: F401

        yield Check("ok", "attention kernels", "torch.nn.attention.sdpa_kernel available")
    except ImportError:
        yield Check("warn", "attention kernels", "torch has no sdpa_kernel: attention=math|flash|efficient|cudnn fail")
    if not hasattr(torch, "compile"):
        yield Check("warn", "torch.compile", "not available: use compile=none")
    elif shutil.which("cc") is None and shutil.which("gcc") is None and not torch.cuda.is_available():
        yield Check("warn", "torch.compile", "no C compiler found: inductor cannot compile CPU stages")
    else:
        yield Check("ok", "torch.compile", "available")
    for dist, purpose in OPTIONAL:
        version = _version(dist)
        yield Check("info", dist, f"{version}" if version else f"not installed ({purpose} unavailable)")


def check_incompatibilities() -> Iterator[Check]:
    """Known incompatibilities between library versions and the published checkpoints."""
    from transformers import GPT2Model

    transformers_version = _version("transformers")
    stock_fails = not hasattr(GPT2Model, "_update_model_kwargs_for_generation")
    detail = (
        f"applies (transformers {transformers_version}): the stock AudioLDM2Pipeline cannot run a GPT2Model prior "
        "(diffusers #12630); the prior stage here has its own loop, and benchmark.reference wraps it"
        if stock_fails
        else f"does not apply (transformers {transformers_version})"
    )
    yield Check("info", "GPT-2 prior vs transformers", detail)
    import torch

    if torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(0)
        if major < 8:
            yield Check("warn", "attention=flash|cudnn", f"needs sm80 or newer (cuda:0 is sm{major}x)")


def check_default_settings() -> Iterator[Check]:
    try:
        cfg = compose_config(["prompt=doctor"])
        validate_config(cfg)
        yield Check("ok", "default settings", "the default config is valid on the devices present")
        tiny = resolve_checkpoint(compose_config(["checkpoint=tiny"]).checkpoint)
        yield Check("ok", "tiny checkpoint", str(tiny))
    except Audioldm2FastError as exc:
        yield Check("FAIL", "default settings", str(exc))
    except Exception as exc:  # noqa: BLE001 - the doctor reports any failure as a line
        yield Check("FAIL", "default settings", f"{type(exc).__name__}: {exc}")
    yield from _default_checkpoint_cached()


def _default_checkpoint_cached() -> Iterator[Check]:
    from huggingface_hub import try_to_load_from_cache

    repo = compose_config([]).checkpoint.repo_id
    try:
        cached = isinstance(try_to_load_from_cache(repo, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - an unreadable cache is the same as no cache here
        cached = False
    detail = "in the Hugging Face cache" if cached else "not in the Hugging Face cache; the first run downloads it"
    yield Check("info", f"checkpoint {repo}", detail)


CHECKS: tuple[Callable[[], Iterator[Check]], ...] = (
    check_versions,
    check_devices,
    check_features,
    check_incompatibilities,
    check_default_settings,
)


def collect_checks() -> list[Check]:
    checks: list[Check] = []
    for check in CHECKS:
        try:
            checks.extend(check())
        except Exception as exc:  # noqa: BLE001 - one broken probe must not hide the others
            checks.append(Check("FAIL", check.__name__.removeprefix("check_"), f"{type(exc).__name__}: {exc}"))
    return checks


def run_doctor(out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print every check; return 0, or ``EnvironmentProblem.exit_code`` when the default settings cannot run."""
    out = out or sys.stdout
    err = err or (out if out is not sys.stdout else sys.stderr)
    checks = collect_checks()
    width = max(len(c.name) for c in checks)
    print("audioldm2-fast doctor", file=out)
    for c in checks:
        print(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}", file=out)
    failed = [c for c in checks if c.status == "FAIL"]
    if failed:
        print(f"audioldm2-fast: error: {len(failed)} check(s) failed: the default settings cannot run here", file=err)
        return EnvironmentProblem.exit_code
    print("the default settings can run here", file=out)
    return 0
