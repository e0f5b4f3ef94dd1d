"""The hostile-input corpus: broken checkpoints, impossible settings, unresolvable interpolations, bad schedulers,
hostile prompts files and output dirs, and other runs' dirs. Each case exits with its code and one line that names
its key (exit 2: the setting, right after ``error:``; exit 3: the checkpoint file), before any weights load, and
leaves every file it was given as it was. ``test_bad_input.py`` holds the older, simpler table.

Cases run in-process through ``cli.main``; a few run as real processes to show that no traceback escapes.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import child_env, dir_with_a_run, fill_placeholders, snapshot

from audioldm2_fast.cli import main

TINY = ["checkpoint=tiny", "output.dir={out}"]


def run(*args: str) -> list[str]:
    return [*TINY, "prompt=rain", *args]


def ckpt(name: str, *args: str) -> list[str]:
    return ["checkpoint=local", f"checkpoint.path={{{name}}}", "prompt=rain", "output.dir={out}", *args]


def pf(name: str, *args: str) -> list[str]:
    return ["checkpoint=tiny", f"prompts_file={{{name}}}", "output.dir={out}", *args]


UNET_ST = "unet/diffusion_pytorch_model.safetensors"

# (id, arguments, exit code, key). {name} is a path the `corpus` fixture makes; {out} an output dir with a run in it.
CASES = [
    # Safetensors files cut short or damaged: exit 3, naming the file.
    ("st-empty", ckpt("st-empty"), 3, UNET_ST),
    ("st-4-bytes", ckpt("st-4-bytes"), 3, UNET_ST),
    ("st-length-only", ckpt("st-length-only"), 3, UNET_ST),
    ("st-header-cut", ckpt("st-header-cut"), 3, UNET_ST),
    ("st-half", ckpt("st-half"), 3, UNET_ST),
    ("st-one-byte-short", ckpt("st-one-byte-short"), 3, UNET_ST),
    ("st-extra-bytes", ckpt("st-extra-bytes"), 3, UNET_ST),
    ("st-header-not-json", ckpt("st-header-not-json"), 3, UNET_ST),
    ("st-header-a-list", ckpt("st-header-a-list"), 3, UNET_ST),
    ("st-unknown-dtype", ckpt("st-unknown-dtype"), 3, UNET_ST),
    ("st-offsets-disagree", ckpt("st-offsets-disagree"), 3, UNET_ST),
    ("st-huge-header-length", ckpt("st-huge-header-length"), 3, UNET_ST),
    ("st-vocoder-half", ckpt("st-vocoder-half"), 3, "vocoder/model.safetensors"),
    ("st-text-encoder-cut", ckpt("st-text-encoder-cut"), 3, "text_encoder/model.safetensors"),
    ("st-language-model-short", ckpt("st-language-model-short"), 3, "language_model/model.safetensors"),
    # Component configs with values their class rejects, or that do not describe their weights: exit 3.
    ("cfg-unet-in-channels-negative", ckpt("cfg-unet-in-channels-negative"), 3, "unet/config.json"),
    ("cfg-unet-block-out-a-string", ckpt("cfg-unet-block-out-a-string"), 3, "unet/config.json"),
    ("cfg-unet-in-channels-other", ckpt("cfg-unet-in-channels-other"), 3, "unet/config.json"),
    ("cfg-unet-a-list", ckpt("cfg-unet-a-list"), 3, "unet/config.json"),
    ("cfg-unet-unknown-block", ckpt("cfg-unet-unknown-block"), 3, "unet/config.json"),
    ("cfg-vae-two-blocks", ckpt("cfg-vae-two-blocks"), 3, "vae/config.json"),
    ("cfg-vae-latent-channels-0", ckpt("cfg-vae-latent-channels-0"), 3, "vae/config.json"),
    ("cfg-vocoder-channels-negative", ckpt("cfg-vocoder-channels-negative"), 3, "vocoder/config.json"),
    ("cfg-language-model-heads", ckpt("cfg-language-model-heads"), 3, "language_model/config.json"),
    ("cfg-language-model-width", ckpt("cfg-language-model-width"), 3, "language_model/config.json"),
    ("cfg-t5-width", ckpt("cfg-t5-width"), 3, "text_encoder_2/config.json"),
    ("cfg-projection-width", ckpt("cfg-projection-width"), 3, "projection_model/config.json"),
    ("cfg-scheduler-beta-schedule", ckpt("cfg-scheduler-beta-schedule"), 3, "scheduler/scheduler_config.json"),
    ("cfg-index-foreign-class", ckpt("cfg-index-foreign-class"), 3, "model_index.json"),
    # Bounds from the checkpoint: GPT-2's positions, the shortest audio, the device's memory.
    ("max-new-tokens-past-positions", run("max_new_tokens=123"), 2, "max_new_tokens"),
    ("max-new-tokens-huge", run("max_new_tokens=1000000000"), 2, "max_new_tokens"),
    ("max-new-tokens-long-prompt", [*TINY, "prompt='" + "rain on a roof " * 30 + "'", "max_new_tokens=80"], 2,
     "max_new_tokens"),
    ("audio-length-1e-9", run("audio_length_s=1e-9"), 2, "audio_length_s"),
    ("audio-length-below-minimum", run("audio_length_s=0.03"), 2, "audio_length_s"),
    ("audio-length-1e308", run("audio_length_s=1e308"), 2, "audio_length_s"),
    ("audio-length-beyond-any-memory", run("audio_length_s=1e9"), 2, "audio_length_s"),
    ("num-waveforms-beyond-any-memory", run("num_waveforms=1000000000000"), 2, "num_waveforms"),
    ("both-beyond-any-memory", run("num_waveforms=1000000", "audio_length_s=1e9"), 2, "audio_length_s"),
    # Interpolations that cannot be resolved.
    ("interp-env-unset", [*TINY, "prompt=${oc.env:AUDIOLDM2_FAST_SURELY_UNSET}"], 2, "prompt"),
    ("interp-missing-key", [*TINY, "prompt=${nope.key}"], 2, "prompt"),
    ("interp-unknown-resolver", [*TINY, "prompt=${no_such_resolver:x}"], 2, "prompt"),
    ("interp-self-reference", [*TINY, "prompt=${prompt}"], 2, "prompt"),
    ("interp-seed", run("seed=${oc.env:AUDIOLDM2_FAST_SURELY_UNSET}"), 2, "seed"),
    ("interp-negative", run("negative_prompt=${nope}"), 2, "negative_prompt"),
    ("interp-output-dir", ["checkpoint=tiny", "prompt=rain", "output.dir=${oc.env:AUDIOLDM2_FAST_SURELY_UNSET}"], 2,
     "output.dir"),
    ("interp-stage-device", run("stages.vocoder.device=${nope}"), 2, "stages.vocoder.device"),
    ("interp-added-scheduler-key", run("+scheduler.config.beta_start=${nope}"), 2, "scheduler.config.beta_start"),
    ("interp-memory", run("memory.decode_batch_size=${nope}"), 2, "memory.decode_batch_size"),
    # Chains that cannot run, and a stage that implements nothing.
    ("chain-reordered", run("pipeline.chain=[prior,text_encoders,denoiser,vae_decoder,vocoder,ranker,writer]"), 2,
     "pipeline.chain"),
    ("chain-without-prior", run("pipeline.chain=[text_encoders,denoiser,vae_decoder,vocoder,writer]"), 2,
     "pipeline.chain"),
    ("chain-writer-first", run("pipeline.chain=[writer,text_encoders,prior,denoiser,vae_decoder,vocoder]"), 2,
     "pipeline.chain"),
    ("stage-implements-nothing", run("stages.vocoder.impl=custom_stages:EmptyStage"), 2, "stages.vocoder.impl"),
    # Schedulers: keys their class does not take, values it rejects, steps it cannot make.
    ("scheduler-unknown-key", run("+scheduler.config.bogus=1"), 2, "scheduler.config.bogus"),
    ("scheduler-unknown-key-ddim", run("scheduler=ddim", "+scheduler.config.use_karras_sigmas=true"), 2,
     "scheduler.config.use_karras_sigmas"),
    ("scheduler-beta-schedule", run("+scheduler.config.beta_schedule=nonsense"), 2, "scheduler.config.beta_schedule"),
    ("scheduler-solver-order-0", run("+scheduler.config.solver_order=0"), 2, "scheduler.config.solver_order"),
    ("scheduler-algorithm", run("+scheduler.config.algorithm_type=nonsense"), 2, "scheduler.config.algorithm_type"),
    ("scheduler-ddim-spacing", run("scheduler=ddim", "+scheduler.config.timestep_spacing=sideways"), 2,
     "scheduler.config.timestep_spacing"),
    ("scheduler-train-steps-negative", run("+scheduler.config.num_train_timesteps=-5"), 2,
     "scheduler.config.num_train_timesteps"),
    ("steps-past-training", run("steps=5000"), 2, "steps"),
    ("steps-past-training-pndm", run("scheduler=pndm", "steps=1001"), 2, "steps"),
    # Prompts files: the prompt= checks, with the file's line; lines split at line feeds only.
    ("pf-nul", pf("nul.txt"), 2, "prompts_file"),
    ("pf-escape", pf("esc.jsonl"), 2, "prompts_file"),
    ("pf-too-long", pf("long.csv"), 2, "prompts_file"),
    ("pf-csv-quoted-newline", pf("newline.csv"), 2, "prompts_file"),
    ("pf-tab", pf("tab.txt"), 2, "prompts_file"),
    ("pf-delete-char", pf("del.txt"), 2, "prompts_file"),
    ("pf-next-line-char", pf("nel.jsonl"), 2, "prompts_file"),
    ("pf-bad-utf8", pf("bad-utf8.txt"), 2, "prompts_file"),
    ("pf-repeated-json-field", pf("repeated.jsonl"), 2, "prompts_file"),
    ("pf-deep-json", pf("deep.jsonl"), 2, "prompts_file"),
    ("pf-repeated-csv-column", pf("repeated.csv"), 2, "prompts_file"),
    ("pf-json-array", pf("array.jsonl"), 2, "prompts_file"),
    ("pf-json-prompt-number", pf("number.jsonl"), 2, "prompts_file"),
    ("pf-json-seed-nan", pf("nan-seed.jsonl"), 2, "prompts_file"),
    ("pf-json-seed-2**64", pf("big-seed.jsonl"), 2, "prompts_file"),
    ("pf-negative-escape", pf("negative.jsonl"), 2, "prompts_file"),
    ("pf-run-negative-escape", pf("ok.txt", "negative_prompt='low\x1bquality'"), 2, "negative_prompt"),
    ("pf-line-audio-too-short", pf("short.jsonl"), 2, "prompts_file"),
    ("pf-line-audio-beyond-memory", pf("long-audio.jsonl"), 2, "prompts_file"),
    ("pf-line-waveforms-beyond-memory", pf("many.jsonl"), 2, "prompts_file"),
    ("pf-max-new-tokens-long-line", pf("long-line.txt", "max_new_tokens=80"), 2, "max_new_tokens"),
    # Output dirs that cannot be used.
    ("out-symlink-loop", ["checkpoint=tiny", "prompt=rain", "output.dir={loop}"], 2, "output.dir"),
    ("out-under-symlink-loop", ["checkpoint=tiny", "prompt=rain", "output.dir={loop}/sub"], 2, "output.dir"),
    ("out-two-link-loop", ["checkpoint=tiny", "prompt=rain", "output.dir={loop_a}"], 2, "output.dir"),
    ("out-dangling-link", ["checkpoint=tiny", "prompt=rain", "output.dir={dangling}"], 2, "output.dir"),
    ("out-under-dangling-link", ["checkpoint=tiny", "prompt=rain", "output.dir={dangling}/sub"], 2, "output.dir"),
    ("out-nul", ["checkpoint=tiny", "prompt=rain", "output.dir='a\x00b'"], 2, "output.dir"),
    ("out-name-too-long", ["checkpoint=tiny", "prompt=rain", "output.dir={out}/" + "n" * 300], 2, "output.dir"),
    # Another batch run's dir: never written over, and two runs with other settings never share it.
    ("batch-foreign-settings-file", pf("ok.txt", "output.dir={foreign_settings}"), 2, "output.dir"),
    ("batch-other-settings", pf("ok.txt", "output.dir={other_settings}", "steps=3"), 2, "output.dir"),
]  # fmt: skip


def _case_id(case) -> str:
    return case[0]


def _rewrite_header(path: Path, edit: Callable[[dict], None]) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    value = json.loads(path.read_text())
    result = edit(value)
    path.write_text(json.dumps(value if result is None else result))


def _cut(n: int | Callable[[int], int]) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: n(len(data)) if callable(n) else n])

    return cut


def _first_entry(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


def _set(**values: object) -> Callable[[Path], None]:
    return lambda path: _edit_json(path, lambda config: config.update(values))


def _scaled(key: str, scale: int, add: int = 0) -> Callable[[Path], None]:
    return lambda path: _edit_json(path, lambda config: config.update({key: config[key] * scale + add}))


def _header(**values: object) -> Callable[[Path], None]:
    return lambda path: _rewrite_header(path, lambda header: _first_entry(header).update(values))


def _bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make(path.read_bytes()))


def _unknown_block(config: dict) -> None:
    config["down_block_types"][0] = "NoSuchBlock"


def _vae_two_blocks(config: dict) -> None:
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        config[key] = config[key][:2]


ST = "diffusion_pytorch_model.safetensors"
# case: (component, file in it, how to damage it)
DAMAGES = {
    "st-empty": ("unet", ST, _cut(0)),
    "st-4-bytes": ("unet", ST, _cut(4)),
    "st-length-only": ("unet", ST, _cut(8)),
    "st-header-cut": ("unet", ST, _cut(108)),
    "st-half": ("unet", ST, _cut(lambda n: n // 2)),
    "st-one-byte-short": ("unet", ST, _cut(lambda n: n - 1)),
    "st-extra-bytes": ("unet", ST, _bytes(lambda data: data + b"\0\0")),
    "st-header-not-json": ("unet", ST, _bytes(lambda data: struct.pack("<Q", 9) + b"{not json" + data[8:])),
    "st-header-a-list": ("unet", ST, _bytes(lambda data: struct.pack("<Q", 2) + b"[]")),
    "st-unknown-dtype": ("unet", ST, _header(dtype="F128")),
    "st-offsets-disagree": ("unet", ST, _header(shape=[7, 7])),
    "st-huge-header-length": ("unet", ST, _bytes(lambda data: struct.pack("<Q", 2**63) + data[8:])),
    "st-vocoder-half": ("vocoder", "model.safetensors", _cut(lambda n: n // 2)),
    "st-text-encoder-cut": ("text_encoder", "model.safetensors", _cut(lambda n: n - 1000)),
    "st-language-model-short": ("language_model", "model.safetensors", _cut(lambda n: n - 4)),
    "cfg-unet-in-channels-negative": ("unet", "config.json", _set(in_channels=-3)),
    "cfg-unet-block-out-a-string": ("unet", "config.json", _set(block_out_channels="abc")),
    "cfg-unet-in-channels-other": ("unet", "config.json", _set(in_channels=4)),
    "cfg-unet-a-list": ("unet", "config.json", lambda path: path.write_text("[1, 2, 3]")),
    "cfg-unet-unknown-block": ("unet", "config.json", lambda path: _edit_json(path, _unknown_block)),
    "cfg-vae-two-blocks": ("vae", "config.json", lambda path: _edit_json(path, _vae_two_blocks)),
    "cfg-vae-latent-channels-0": ("vae", "config.json", _set(latent_channels=0)),
    "cfg-vocoder-channels-negative": ("vocoder", "config.json", _set(upsample_initial_channel=-32)),
    "cfg-language-model-heads": ("language_model", "config.json", _set(n_head=3)),
    "cfg-language-model-width": ("language_model", "config.json", _set(n_embd=32)),
    "cfg-t5-width": ("text_encoder_2", "config.json", _scaled("d_model", 2)),
    "cfg-projection-width": ("projection_model", "config.json", _scaled("text_encoder_dim", 1, add=1)),
    "cfg-scheduler-beta-schedule": ("scheduler", "scheduler_config.json", _set(beta_schedule="nonsense")),
}  # fmt: skip

PROMPT_FILES = {
    "nul.txt": "rain\nwind\x00gust\n",
    "esc.jsonl": json.dumps({"prompt": "\x1b[31mred rain"}) + "\n",
    "long.csv": "prompt\nrain\n" + "a" * 10_001 + "\n",
    "newline.csv": 'prompt,seed\n"rain\non a roof",1\n',
    "tab.txt": "rain\twind\n",
    "del.txt": "rain\x7f\n",
    "nel.jsonl": json.dumps({"prompt": "rain\u0085wind"}, ensure_ascii=False) + "\n",
    "repeated.jsonl": '{"prompt": "rain", "prompt": "wind"}\n',
    "deep.jsonl": '{"prompt": ' + "[" * 100_000 + "\n",
    "repeated.csv": "prompt,seed,seed\nrain,1,2\n",
    "array.jsonl": '["rain"]\n',
    "number.jsonl": '{"prompt": 5}\n',
    "nan-seed.jsonl": '{"prompt": "rain", "seed": NaN}\n',
    "big-seed.jsonl": '{"prompt": "rain", "seed": 18446744073709551616}\n',
    "negative.jsonl": json.dumps({"prompt": "rain", "negative_prompt": "noise\x1b"}) + "\n",
    "ok.txt": "rain\nwind\n",
    "short.jsonl": '{"prompt": "rain"}\n{"prompt": "wind", "audio_length_s": 0.001}\n',
    "long-audio.jsonl": '{"prompt": "rain"}\n{"prompt": "wind", "audio_length_s": 1e9}\n',
    "many.jsonl": '{"prompt": "rain", "num_waveforms": 1000000000000}\n',
    "long-line.txt": "rain\n" + "rain on a roof " * 30 + "\n",
}


def _damaged_copy(tiny_dir: Path, dest: Path, component: str, file: str, damage: Callable[[Path], None]) -> None:
    """A checkpoint whose other components are links to tiny's, and ``component`` a damaged copy."""
    dest.mkdir()
    shutil.copy(tiny_dir / "model_index.json", dest / "model_index.json")
    for sub in tiny_dir.iterdir():
        if sub.is_dir() and sub.name != component:
            (dest / sub.name).symlink_to(sub)
    shutil.copytree(tiny_dir / component, dest / component)
    damage(dest / component / file)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    for case, (component, file, damage) in DAMAGES.items():
        _damaged_copy(tiny_dir, root / case, component, file, damage)
    foreign = root / "cfg-index-foreign-class"
    _damaged_copy(tiny_dir, foreign, "vae", "config.json", lambda p: None)
    _edit_json(foreign / "model_index.json", lambda index: index.update(unet=["transformers", "BertModel"]))
    for name, text in PROMPT_FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "bad-utf8.txt").write_bytes(b"rain\nwi\xffnd\n")
    links = root / "links"
    links.mkdir()
    (links / "loop").symlink_to(links / "loop")
    (links / "a").symlink_to(links / "b")
    (links / "b").symlink_to(links / "a")
    (links / "dangling").symlink_to(root / "nowhere" / "at-all")
    foreign_settings = root / "foreign_settings"
    foreign_settings.mkdir()
    (foreign_settings / "batch_settings.json").write_text("my own settings, not a batch run's\n")
    other = root / "other_settings"
    other.mkdir()
    from audioldm2_fast.batch.settings import SETTINGS_FILE, batch_settings
    from audioldm2_fast.config.compose import compose_config

    recorded = batch_settings(compose_config(["checkpoint=tiny", f"prompts_file={root / 'ok.txt'}"]))
    (other / SETTINGS_FILE).write_text(json.dumps(recorded))
    names = {p.name: str(p) for p in root.iterdir()}
    return names | {"loop": str(links / "loop"), "loop_a": str(links / "a"), "dangling": str(links / "dangling")}


@pytest.fixture
def existing(tmp_path) -> Path:
    return dir_with_a_run(tmp_path / "existing")


def _args(args: list[str], names: dict[str, str], out: Path) -> list[str]:
    return fill_placeholders(args, {**names, "out": str(out)})


def test_the_corpus_is_big_enough():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert set(DAMAGES) <= set(ids)


@pytest.mark.parametrize("case_id,args,code,key", CASES, ids=[_case_id(c) for c in CASES])
def test_hostile_input(case_id, args, code, key, corpus, existing, tmp_path, monkeypatch, capsys):
    from audioldm2_fast.checkpoints import store

    load = store.ComponentStore._load

    def tokenizers_only(self, name, dtype):  # processors are read to count tokens; weights never
        assert name in store.PROCESSORS, f"component {name} was loaded"
        return load(self, name, dtype)

    monkeypatch.setattr(store.ComponentStore, "_load", tokenizers_only)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a Hydra run dir would appear here
    root = Path(corpus["ok.txt"]).parent
    before, given = snapshot(existing), snapshot(root, contents=False)
    with pytest.raises(SystemExit) as exc:
        main(_args(args, corpus, existing))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if code == 2:
        assert err.startswith(f"audioldm2-fast: error: {key}: "), err
    else:
        assert err.startswith("audioldm2-fast: error: checkpoint ") and f"/{key}" in err, err
    assert snapshot(existing) == before
    assert snapshot(root, contents=False) == given
    assert list(cwd.iterdir()) == []


SUBPROCESS_CASES = ["st-half", "cfg-unet-in-channels-negative", "interp-env-unset", "scheduler-beta-schedule",
                    "pf-nul", "audio-length-beyond-any-memory", "out-symlink-loop"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_hostile_input_in_a_real_process_has_no_traceback(case_id, corpus, existing, tmp_path):
    (_, args, code, key) = next(c for c in CASES if c[0] == case_id)
    before = snapshot(existing)
    proc = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", *_args(args, corpus, existing)],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert key in proc.stderr and proc.stdout == ""
    assert snapshot(existing) == before
