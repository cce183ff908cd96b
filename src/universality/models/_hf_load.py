"""Loading a Hugging Face model and tokenizer from a local directory or the local hub cache.

Nothing is downloaded: a hub name resolves only through the local cache (`local_files_only`),
so it works under `HF_HUB_OFFLINE=1`. Every failure is one `UniversalityError` line.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UniversalityError
from ._hf_adapter import HFAdapter, check_architecture

__all__ = ["load_hf", "resolve_model_dir"]

_WEIGHT_FILES = ("*.safetensors", "pytorch_model.bin", "pytorch_model*.bin", "*.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


def resolve_model_dir(spec: str | Path) -> Path:
    """A model directory: `spec` itself when it is a directory, else a hub name's cached snapshot."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UniversalityError(f"{text!r} is a file; pass the model directory that holds config.json and the weights")
    looks_like_path = not text or text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise UniversalityError(f"model directory {text!r} does not exist")
    from huggingface_hub import constants, snapshot_download
    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:
        raise UniversalityError(
            f"{text!r} is neither a local directory nor a model in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); nothing is downloaded (HF_HUB_OFFLINE): pass a directory, "
            "or download the model first on a machine with network access") from None


@contextmanager
def _quiet_transformers():
    """Silence load reports and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf(spec: str | Path, *, device: str = "cpu") -> HFAdapter:
    """An `HFAdapter` for the model in directory / cached hub model `spec`, float32 on `device`.

    Steps: 1) resolve the directory; 2) require config.json and a weights file; 3) read the config
    and check the architecture is supported; 4) load the head model (`AutoModelForCausalLM` for
    decoders, `AutoModelForMaskedLM` for encoders); weights missing outside the head are an error,
    a missing head means no logits; shapes that disagree with the config are an error;
    5) load the tokenizer when the directory has one.
    """
    directory = resolve_model_dir(spec)
    if not (directory / "config.json").is_file():
        raise UniversalityError(f"{str(directory)!r} has no config.json; is it a Hugging Face model directory?")
    if not any(any(directory.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise UniversalityError(f"{str(directory)!r} holds no weights (no *.safetensors or pytorch_model.bin); "
                                "save the model with save_pretrained")
    import transformers
    name = str(spec)
    with _quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        except Exception as error:
            raise UniversalityError(f"{name}: cannot read config.json: {_first_line(error)}") from None
        arch = check_architecture(config.model_type, name)
        auto = transformers.AutoModelForCausalLM if arch.kind == "decoder" else transformers.AutoModelForMaskedLM
        kwargs = dict(config=config, local_files_only=True, dtype=torch.float32, output_loading_info=True)
        try:
            model, info = auto.from_pretrained(directory, **kwargs)
        except Exception as error:
            raise UniversalityError(_load_error(name, auto, directory, kwargs, error)) from None
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(arch.head))
    if missing:
        raise UniversalityError(f"{name}: the checkpoint lacks {len(missing)} weights its {config.model_type} config "
                                f"needs, e.g. {missing[0]!r}")
    has_head = not any(k.startswith(arch.head) for k in info["missing_keys"])
    return HFAdapter(model.to(device), name=name, tokenizer=_tokenizer(directory, name), has_head=has_head)


def _load_error(name, auto, directory, kwargs, error) -> str:
    """One line for a failed load; a shape mismatch is located by loading again without the check."""
    try:
        _, info = auto.from_pretrained(directory, ignore_mismatched_sizes=True, **kwargs)
    except Exception:
        return f"{name}: cannot load the weights: {_first_line(error)}"
    if not info.get("mismatched_keys"):
        return f"{name}: cannot load the weights: {_first_line(error)}"
    key, saved, expected = sorted(info["mismatched_keys"])[0]
    return (f"{name}: weight {key!r} has shape {list(saved)} but config.json implies {list(expected)} "
            f"({len(info['mismatched_keys'])} weights disagree); the config does not belong to these weights")


def _tokenizer(directory: Path, name: str):
    if not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        return None
    import transformers
    with _quiet_transformers():
        try:
            return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as error:
            raise UniversalityError(f"{name}: cannot load the tokenizer saved with the model: "
                                    f"{_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
