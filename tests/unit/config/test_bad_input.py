"""Hostile and broken invocations: each one exits non-zero with one line naming the problem, before any model loads,
and leaves existing outputs exactly as they were.

Most cases run in-process through ``cli.main``; a few run as real processes to show that no traceback escapes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, child_env, dir_with_a_run, fill_placeholders, snapshot

from audioldm2_fast.cli import main
from audioldm2_fast.config.prompts import MAX_PROMPT_CHARS

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits, so chmod cannot make a path unusable")
BASE = ["checkpoint=tiny", "prompt=rain", "output.dir={out}"]


def prompt(value: str) -> list[str]:
    return ["checkpoint=tiny", f"prompt={value}", "output.dir={out}"]


def local(path: str, *extra: str) -> list[str]:
    return ["checkpoint=local", f"checkpoint.path={path}", "prompt=rain", "output.dir={out}", *extra]


# (id, arguments, exit code, text the one-line message must contain). {name} is a path built by the `paths` fixture.
CASES = [
    # Wrong types.
    ("seed-word", [*BASE, "seed=abc"], 2, "seed"),
    ("seed-float", [*BASE, "seed=1.5"], 2, "seed"),
    ("num_waveforms-word", [*BASE, "num_waveforms=two"], 2, "num_waveforms"),
    ("num_waveforms-float", [*BASE, "num_waveforms=1.0"], 2, "num_waveforms"),
    ("guidance-word", [*BASE, "guidance_scale=loud"], 2, "guidance_scale"),
    ("steps-list", [*BASE, "steps=[1,2]"], 2, "steps"),
    ("audio_length-bool", [*BASE, "audio_length_s=true"], 2, "audio_length_s"),
    ("progress-word", [*BASE, "progress=maybe"], 2, "progress"),
    ("prompt-mapping", prompt("{a:1}"), 2, "prompt"),
    ("prompt-list-with-number", prompt("[rain,3]"), 2, "prompt[1]"),
    ("negative-number", [*BASE, "negative_prompt=5"], 2, "negative_prompt"),
    ("allow_pickle-word", [*BASE, "checkpoint.allow_pickle=yes"], 2, "checkpoint.allow_pickle"),
    ("stage-impl-not-a-stage", [*BASE, "stages.vocoder.impl=os:path"], 2, "stages.vocoder.impl"),
    ("stage-impl-missing-module", [*BASE, "stages.vocoder.impl=no.such.module:X"], 2, "stages.vocoder.impl"),
    # Out-of-range numbers.
    ("eta-nan", [*BASE, "eta=nan"], 2, "eta"),
    ("guidance-inf", [*BASE, "guidance_scale=inf"], 2, "guidance_scale"),
    ("seed-2**63", [*BASE, "seed=9223372036854775808"], 2, "seed"),
    ("name_max_length-3", [*BASE, "output.name_max_length=3"], 2, "output.name_max_length"),
    ("max_new_tokens-0", [*BASE, "max_new_tokens=0"], 2, "max_new_tokens"),
    ("default_steps-0", [*BASE, "scheduler.default_steps=0"], 2, "scheduler.default_steps"),
    ("benchmark-runs-0", [*BASE, "task=benchmark", "benchmark.runs=0"], 2, "benchmark.runs"),
    ("pndm-too-few-steps", [*BASE, "scheduler=pndm", "steps=2"], 2, "steps"),
    # Unknown keys, options and values.
    ("unknown-key", [*BASE, "foo=1"], 2, "foo"),
    ("unknown-nested-key", [*BASE, "output.colour=red"], 2, "output.colour"),
    ("unknown-stage-key", [*BASE, "stages.nope.device=cpu"], 2, "stages.nope.device"),
    ("added-key", [*BASE, "+foo=1"], 2, "foo"),
    ("unknown-attention", [*BASE, "attention=turbo"], 2, "attention"),
    ("unknown-offload", [*BASE, "offload=disk"], 2, "offload"),
    ("unknown-task", [*BASE, "task=train"], 2, "task"),
    ("unknown-flag", [*BASE, "--frobnicate"], 2, "--frobnicate"),
    ("flag-without-value", [*BASE, "--config-name"], 2, "--config-name"),
    ("benchmark-reference", [*BASE, "task=benchmark", "benchmark.reference=stock"], 2, "benchmark.reference"),
    ("dtype-fp64", [*BASE, "stages.denoiser.dtype=fp64"], 2, "stages.denoiser.dtype"),
    ("chain-empty", [*BASE, "pipeline.chain=[]"], 2, "pipeline.chain"),
    ("chain-unknown-stage", [*BASE, "pipeline.chain=[text_encoders,bogus]"], 2, "pipeline.chain"),
    ("override-without-value", [*BASE, "prompt"], 2, "prompt"),
    ("delete-required-prompt", ["checkpoint=tiny", "~prompt", "output.dir={out}"], 2, "prompt"),
    # Prompts.
    ("prompt-control-char", prompt("'rain\x07drops'"), 2, "U+0007 at position 4"),
    ("prompt-escape-seq", prompt("'\x1b[31mred'"), 2, "U+001B at position 0"),
    ("prompt-tab", prompt("'a\tb'"), 2, "U+0009"),
    ("prompt-too-long", ["checkpoint=tiny", f"prompt={'a' * (MAX_PROMPT_CHARS + 1)}", "output.dir={out}"], 2, "limit"),
    ("prompt-whitespace", prompt("'  '"), 2, "prompt"),
    ("prompt-list-blank-item", prompt("[rain,'']"), 2, "prompt[1]"),
    ("negative-control-char", [*BASE, "negative_prompt='low\x00quality'"], 2, "negative_prompt"),
    # Config files.
    ("config-dir-missing", ["--config-dir", "{missing}", *BASE], 2, "--config-dir"),
    ("config-dir-is-file", ["--config-dir", "{file}", *BASE], 2, "--config-dir"),
    ("config-name-missing", ["--config-name", "nope", *BASE], 2, "--config-name"),
    ("experiment-bad-value", ["--config-dir", "{cfgdir}", *BASE, "experiment=bad"], 2, "steps"),
    ("experiment-broken-yaml", ["--config-dir", "{cfgdir}", *BASE, "experiment=broken"], 2, "broken.yaml"),
    ("experiment-unknown", [*BASE, "experiment=nope"], 2, "experiment"),
    # Checkpoint directories.
    ("ckpt-missing", local("{missing}"), 2, "does not exist"),
    ("ckpt-is-file", local("{file}"), 2, "is not a directory"),
    ("ckpt-empty-dir", local("{empty}"), 2, "no model_index.json"),
    ("ckpt-bad-model-index", local("{bad_index}"), 2, "cannot read"),
    ("ckpt-bin-only", local("{bin_only}"), 3, "checkpoint.allow_pickle=true"),
    ("ckpt-corrupt-config", local("{bad_config}"), 3, "cannot parse"),
    ("ckpt-component-missing", local("{no_unet}"), 3, "'unet' has no folder"),
    ("ckpt-config-is-a-directory", local("{config_dir}"), 3, "cannot parse"),
    ("ckpt-index-is-a-directory", local("{index_dir}"), 2, "no model_index.json"),
    ("doctor-bad-value", ["task=doctor", "steps=0"], 2, "steps"),
    ("doctor-in-a-sweep", ["-m", "task=generate,doctor", "checkpoint=tiny", "prompt=x"], 2, "without -m"),
    pytest.param("ckpt-unreadable", local("{unreadable}"), 2, "checkpoint.path", marks=ROOT_SKIP),
    # Prompt files.
    ("pf-missing", ["checkpoint=tiny", "prompts_file={missing}.txt"], 2, "prompts_file"),
    ("pf-a-directory", ["checkpoint=tiny", "prompts_file={empty}"], 2, "prompts_file"),
    ("pf-unknown-suffix", ["checkpoint=tiny", "prompts_file={file}"], 2, "prompts_file"),
    ("pf-empty", ["checkpoint=tiny", "prompts_file={pf_empty.txt}"], 2, "prompts_file"),
    ("pf-bad-json-line", ["checkpoint=tiny", "prompts_file={pf_bad.jsonl}"], 2, "line 2"),
    ("pf-csv-no-prompt-column", ["checkpoint=tiny", "prompts_file={pf_nocol.csv}"], 2, "prompt"),
    ("pf-csv-bad-seed", ["checkpoint=tiny", "prompts_file={pf_seed.csv}"], 2, "line 3"),
    ("pf-with-prompt", ["checkpoint=tiny", "prompt=x", "prompts_file={pf_ok.txt}"], 2, "prompts_file"),
    ("pf-batch_size-0", ["checkpoint=tiny", "prompts_file={pf_ok.txt}", "batch_size=0"], 2, "batch_size"),
    ("pf-shard-index-out-of-range", ["checkpoint=tiny", "prompts_file={pf_ok.txt}", "shard.count=2", "shard.index=2"],
     2, "shard.index"),
    # Output directories.
    ("out-is-file", ["checkpoint=tiny", "prompt=rain", "output.dir={file}"], 2, "not a directory"),
    ("out-under-a-file", ["checkpoint=tiny", "prompt=rain", "output.dir={file}/sub"], 2, "is a file"),
    ("out-empty-string", ["checkpoint=tiny", "prompt=rain", "output.dir=''"], 2, "output.dir"),
    ("out-not-writable-proc", ["checkpoint=tiny", "prompt=rain", "output.dir=/proc/1"], 2, "not writable"),
    pytest.param("out-read-only", ["checkpoint=tiny", "prompt=rain", "output.dir={readonly}"], 2, "not writable",
                 marks=ROOT_SKIP),
    pytest.param("out-under-read-only", ["checkpoint=tiny", "prompt=rain", "output.dir={readonly}/sub"], 2,
                 "not writable", marks=ROOT_SKIP),
]  # fmt: skip


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _copy_tiny(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    return dest


def pickle_only_copy(tiny_dir: Path, dest: Path, component: str = "vae") -> Path:
    """A copy of tiny whose ``component`` has its weights as a torch pickle (``.bin``) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    _copy_tiny(tiny_dir, dest)
    for f in (dest / component).glob("*.safetensors"):
        torch.save(load_file(f), f.with_suffix(".bin"))
        f.unlink()
    return dest


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    (root / "file").write_text("a file")
    (root / "empty").mkdir()
    (root / "bad_index").mkdir()
    (root / "bad_index" / "model_index.json").write_text("{not json")
    pickle_only_copy(tiny_dir, root / "bin_only")
    (_copy_tiny(tiny_dir, root / "bad_config") / "unet" / "config.json").write_text('{"sample_size": ')
    shutil.rmtree(_copy_tiny(tiny_dir, root / "no_unet") / "unet")
    config = _copy_tiny(tiny_dir, root / "config_dir") / "vocoder" / "config.json"  # unreadable, even for root
    config.unlink()
    config.mkdir()
    (root / "index_dir").mkdir()
    (root / "index_dir" / "model_index.json").mkdir()
    (root / "cfgdir" / "experiment").mkdir(parents=True)
    (root / "cfgdir" / "experiment" / "bad.yaml").write_text("# @package _global_\nsteps: -5\n")
    (root / "cfgdir" / "experiment" / "broken.yaml").write_text("steps: [1\n")
    (root / "pf_empty.txt").write_text("\n# only a comment\n")
    (root / "pf_bad.jsonl").write_text('{"prompt": "rain"}\n{"prompt": "wind"\n')
    (root / "pf_nocol.csv").write_text("text,seed\nrain,1\n")
    (root / "pf_seed.csv").write_text("prompt,seed\nrain,1\nwind,minus one\n")
    (root / "pf_ok.txt").write_text("rain\nwind\n")
    for name in ("unreadable", "readonly"):
        (root / name).mkdir()
    (root / "unreadable").chmod(0o000)
    (root / "readonly").chmod(0o555)
    yield {p.name: str(p) for p in root.iterdir()} | {"missing": str(root / "missing")}
    for name in ("unreadable", "readonly"):
        (root / name).chmod(0o755)


@pytest.fixture
def existing(tmp_path) -> Path:
    return dir_with_a_run(tmp_path / "existing")


def _args(args: list[str], paths: dict[str, str], out: Path) -> list[str]:
    return fill_placeholders(args, {**paths, "out": str(out)})


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({_case_id(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id,args,code,text", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_invocation(case_id, args, code, text, paths, existing, tmp_path, monkeypatch, capsys):
    from audioldm2_fast.checkpoints import store as loading

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading.ComponentStore, "_load", no_loading)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a Hydra run dir would appear here
    before = snapshot(existing)
    with pytest.raises(SystemExit) as exc:
        main(_args(args, paths, existing))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code, err
    assert len(err.splitlines()) == 1 and err.startswith("audioldm2-fast: error: "), err
    assert text in err, err
    assert "Traceback" not in err
    assert snapshot(existing) == before
    assert list(cwd.iterdir()) == []


SUBPROCESS_CASES = ["steps=abc", "--frobnicate", "prompt='a\x07b'", "checkpoint.path={bin_only}"]


@pytest.mark.slow
@pytest.mark.parametrize("arg", SUBPROCESS_CASES)
def test_bad_invocation_in_a_real_process_has_no_traceback(arg, paths, existing, tmp_path):
    args = ["checkpoint=tiny", "prompt=rain", f"output.dir={existing}", arg.format(**paths)]
    if "checkpoint.path" in arg:
        args[0] = "checkpoint=local"
    before = snapshot(existing)
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode in (2, 3)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert snapshot(existing) == before


def test_pickle_weights_load_only_when_the_user_opts_in(paths, tmp_path):
    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.generator import Generator

    cfg = compose_config(
        ["checkpoint=local", f"checkpoint.path={paths['bin_only']}", "checkpoint.allow_pickle=true", "prompt=x"]
        + ["steps=1", "audio_length_s=0.5", f"output.dir={tmp_path / 'o'}"]
    )
    gen = Generator(cfg)
    assert gen.generate().waveforms.shape == (1, 8000)
    assert type(gen.store.get("vae")).__name__ == "AutoencoderKL"


def test_every_weight_load_uses_safetensors_and_no_remote_code():
    """Static: every from_pretrained call for weights asks for safetensors, and nothing enables remote code."""
    src = ROOT / "src" / "audioldm2_fast"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        if path.name == "loading.py":
            weight_calls = [ln for ln in text.splitlines() if "from_pretrained(" in ln and "dtype" in ln]
            assert weight_calls and all("use_safetensors=" in ln for ln in weight_calls)


def test_from_pretrained_sees_use_safetensors_true(tiny_dir, monkeypatch):
    """Dynamic: the real loader passes use_safetensors=True and never trust_remote_code."""
    from diffusers import AutoencoderKL
    from transformers import T5EncoderModel

    from audioldm2_fast.checkpoints.store import ComponentStore

    seen = []
    for cls in (AutoencoderKL, T5EncoderModel):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    store = ComponentStore(tiny_dir)
    store.get("vae")
    store.get("text_encoder_2")
    assert len(seen) == 2
    assert all(k.get("use_safetensors") is True and not k.get("trust_remote_code") for k in seen)


ODD_BUT_VALID = {
    "rtl-arabic": "صوت المطر على سطح من الصفيح",
    "rtl-hebrew-with-mark": "\u200fגשם על גג פח",
    "emoji": "🌧️ rain on a tin roof 🥁",
    "emoji-only": "🎻🎻🎻",
    "zwj-sequence": "👩\u200d🎤 sings",
    "thousands-of-chars": "drums and waves " * 400,
}


def test_odd_prompts_generate_with_safe_file_names(make_generator, tmp_path, caplog):
    out = tmp_path / "odd"
    prompts = list(ODD_BUT_VALID.values())
    gen = make_generator("prompt=x", "steps=1", "audio_length_s=0.5", out=out)
    result = gen.generate(prompt=prompts)
    assert result.failed == [] and len(result.records) == len(prompts)
    assert [r["prompt"] for r in result.records] == prompts  # recorded in full, as given
    for record in result.records:
        name = record["path"]
        assert len(name) < 100 and name.isascii() and "/" not in name and not name.startswith(".")
        assert (out / name).is_file()
    assert len(ODD_BUT_VALID["thousands-of-chars"]) == 6400
    assert "truncated" in caplog.text  # the long prompt was cut to the tokenizer limit, and the log says so
