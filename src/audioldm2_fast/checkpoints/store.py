"""Load checkpoint components one by one through ``from_pretrained``.

Each component is loaded only when a stage asks for it, directly in the dtype that stage runs in. Only the classes
an AudioLDM 2 checkpoint is made of can be named by ``model_index.json``; weights load from safetensors only
(``use_safetensors=True``), unless ``allow_pickle`` opts in to a component that has only pickle-based weights, and
``trust_remote_code`` is never used.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from ..runtime.errors import CheckpointError
from .resolve import read_model_index
from .safety import weight_files

# (library, class) pairs that model_index.json may name. Schedulers are checked separately.
ALLOWED_CLASSES: dict[str, set[str]] = {
    "diffusers": {"AutoencoderKL"},
    "audioldm2": {"AudioLDM2UNet2DConditionModel", "AudioLDM2ProjectionModel"},
    "transformers": {
        "ClapModel",
        "ClapFeatureExtractor",
        "T5EncoderModel",
        "GPT2Model",
        "GPT2LMHeadModel",
        "SpeechT5HifiGan",
        "RobertaTokenizer",
        "RobertaTokenizerFast",
        "T5Tokenizer",
        "T5TokenizerFast",
    },
}
PROCESSORS = {"tokenizer", "tokenizer_2", "feature_extractor"}


def _import_class(library: str, class_name: str) -> type:
    if library == "audioldm2":
        module = importlib.import_module("diffusers.pipelines.audioldm2")
    elif library == "diffusers" and class_name.endswith("Scheduler"):
        module = importlib.import_module("diffusers.schedulers")
    else:
        module = importlib.import_module(library)
    return getattr(module, class_name)


class ComponentStore:
    """Lazily loaded components of one checkpoint directory, shared by the stages of a chain."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = Path(path)
        self.allow_pickle = allow_pickle
        self.index = read_model_index(self.path)
        self._loaded: dict[str, Any] = {}

    def class_name(self, name: str) -> str:
        entry = self.index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise CheckpointError(f"checkpoint {self.path}: component {name!r} is missing from model_index.json")
        return str(entry[1])

    def config(self, name: str) -> dict[str, Any]:
        """The component's JSON config, read without loading weights."""
        sub = self.path / name
        for fname in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            if (sub / fname).is_file():
                return json.loads((sub / fname).read_text())
        raise CheckpointError(f"checkpoint {self.path}: component {name!r} has no config file")

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Any:
        """Return component ``name``, loading it in ``dtype`` on first use.

        ``device`` is where the caller will run it; checkpoints on disk ignore it and always load on the CPU (the
        stage or its offload policy places the module). Stores that build components may build them there.
        Whatever the model library raises while loading becomes one CheckpointError naming the component.
        """
        if name not in self._loaded:
            try:
                self._loaded[name] = self._load(name, dtype)
            except (CheckpointError, torch.OutOfMemoryError, MemoryError):
                raise
            except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError, ImportError) as exc:
                if "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
                    raise
                first = (str(exc).strip().splitlines() or ["no details"])[0][:300]
                raise CheckpointError(
                    f"checkpoint {self.path}: component {name!r} cannot be loaded: {type(exc).__name__}: {first}"
                ) from None
        return self._loaded[name]

    def loaded(self) -> dict[str, Any]:
        return dict(self._loaded)

    def meta(self, name: str, dtype: torch.dtype) -> torch.nn.Module | None:
        """Component ``name`` built on the ``meta`` device from its config alone: shapes and parameter counts, no
        weights read or allocated (None for tokenizers, the feature extractor and the scheduler)."""
        library, class_name = self.index.get(name, [None, None])
        if name in PROCESSORS or str(class_name).endswith("Scheduler") or class_name is None:
            return None
        cls = self._allowed_class(name, library, class_name)
        with torch.device("meta"):
            if library == "transformers":
                module = cls(cls.config_class.from_pretrained(self.path / name))
            else:
                module = cls.from_config(cls.load_config(self.path, subfolder=name))
        torch.nn.Module.to(module, dtype=dtype)  # diffusers' ModelMixin.to warns on every dtype cast
        return module.eval()

    def _allowed_class(self, name: str, library: Any, class_name: Any) -> type:
        """The class ``model_index.json`` names for ``name``, imported only when it is one a checkpoint is made of."""
        if class_name not in ALLOWED_CLASSES.get(str(library), set()):
            raise CheckpointError(
                f"checkpoint {self.path}: {str(self.path / 'model_index.json')!r} names {library}.{class_name} for "
                f"component {name!r}, which is not a class an AudioLDM 2 checkpoint is made of"
            )
        return _import_class(str(library), str(class_name))

    def _load(self, name: str, dtype: torch.dtype | None) -> Any:
        library, class_name = self.index.get(name, [None, None])
        if library == "diffusers" and str(class_name).endswith("Scheduler"):
            return _import_class(library, class_name).from_pretrained(self.path, subfolder=name)
        cls = self._allowed_class(name, library, class_name)
        sub = self.path / name
        if name in PROCESSORS:
            return cls.from_pretrained(sub)
        safetensors, pickles = weight_files(sub)
        if not safetensors and not (self.allow_pickle and pickles):
            found = sorted(p.name for p in sub.iterdir()) if sub.is_dir() else []
            raise CheckpointError(
                f"checkpoint {self.path}: component {name!r} has no .safetensors weights (found {found}); "
                "pickle-based weight files are not loaded unless checkpoint.allow_pickle=true"
            )
        use_safetensors = bool(safetensors)  # False only for a pickle-only component the user opted in to
        dtype = dtype or torch.float32
        if library == "transformers":
            return cls.from_pretrained(sub, use_safetensors=use_safetensors, dtype=dtype).eval()
        return cls.from_pretrained(self.path, subfolder=name, use_safetensors=use_safetensors, torch_dtype=dtype).eval()
