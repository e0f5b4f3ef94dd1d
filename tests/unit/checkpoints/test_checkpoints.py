"""Checkpoint resolution and loading: tiny built offline, local dirs, safetensors only."""

from __future__ import annotations

import json
import shutil

import pytest

from audioldm2_fast.checkpoints.store import ComponentStore
from audioldm2_fast.runtime.errors import CheckpointError


def test_tiny_is_a_diffusers_checkpoint_on_disk(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDM2Pipeline"
    assert index["language_model"] == ["transformers", "GPT2Model"]
    for name in ["unet", "vae", "vocoder", "text_encoder", "text_encoder_2", "language_model", "projection_model"]:
        assert list((tiny_dir / name).glob("*.safetensors")), name
    for name in ["tokenizer", "tokenizer_2"]:
        assert (tiny_dir / name / "tokenizer_config.json").is_file()


def test_tiny_build_is_deterministic(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    from audioldm2_fast.checkpoints.tiny import tiny_checkpoint_dir

    again = tiny_checkpoint_dir(cache_dir=tmp_path)
    assert again != tiny_dir
    a = load_file(next((tiny_dir / "unet").glob("*.safetensors")))
    b = load_file(next((again / "unet").glob("*.safetensors")))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_pickle_only_weights_are_refused(tmp_path, tiny_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    for f in (ckpt / "vae").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    store = ComponentStore(ckpt)
    with pytest.raises(CheckpointError, match="no .safetensors"):
        store.get("vae")


def test_unknown_component_class_is_refused(tmp_path, tiny_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    index = json.loads((ckpt / "model_index.json").read_text())
    index["vae"] = ["evil_module", "Payload"]
    (ckpt / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a class an AudioLDM 2 checkpoint is made of"):
        ComponentStore(ckpt).get("vae")


def test_components_load_in_the_requested_dtype(tiny_dir):
    import torch

    store = ComponentStore(tiny_dir)
    clap = store.get("text_encoder", torch.float32)
    assert next(clap.parameters()).dtype == torch.float32


def test_whatever_a_component_raises_while_loading_is_one_line_naming_it(tmp_path, tiny_dir):
    """A tokenizer file that parses as JSON but is not a tokenizer: not caught by any file check, so loading fails;
    it fails as one CheckpointError naming the component, not as the library's traceback."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    (ckpt / "tokenizer_2" / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Nope"}}))
    with pytest.raises(CheckpointError, match="component 'tokenizer_2' cannot be loaded") as info:
        ComponentStore(ckpt).get("tokenizer_2")
    assert "\n" not in str(info.value) and info.value.exit_code == 3


def test_a_truncated_download_is_refused_by_its_header(tmp_path, tiny_dir):
    from audioldm2_fast.checkpoints.safety import safetensors_header

    for path in tiny_dir.rglob("*.safetensors"):  # every file of the tiny checkpoint is whole
        header = safetensors_header(path)
        assert header and all("data_offsets" in entry for entry in header.values())
    cut = tmp_path / "cut.safetensors"
    data = (tiny_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="cut short"):
        safetensors_header(cut)
