"""Load an SAE from whichever library wrote it; save ours.

`load(path)` tells the format from the files in the directory (or beside the file) and refuses, in one
line naming the directory, when the files match no format, only part of one, or several:

| format              | files                                | loader (module)                        |
|---------------------|--------------------------------------|----------------------------------------|
| universality        | sae.json + sae.safetensors           | `_load_universality` (here)            |
| saelens             | cfg.json + sae_weights.safetensors   | `load_saelens` (`_libraries`)          |
| sparsify            | cfg.json + sae.safetensors           | `load_sparsify` (`_libraries`)         |
| dictionary_learning | config.json + ae.pt                  | `load_dictionary_learning` (`_libraries`) |

Every loaded SAE is float32 on the CPU, `W_enc` / `W_dec` [latents, d_in], with `metadata["format"]`,
`metadata["path"]` (the directory) and, where the format records one, `metadata["hookpoint"]`.

Our format, written by `save` (e.g. by the trainer under `runs/<name>/saes/<model>/<unit_set>/<width>-seed<k>/`):
  sae.safetensors   W_enc [latents, d_in], b_enc [latents], W_dec [latents, d_in], b_dec [d_in],
                    threshold [latents] (jumprelu) or [] (batchtopk), when the SAE has one
  sae.json          {"format": "universality-sae", "version": 1, "d_in", "latents", "activation", "k",
                     "subtract_decoder_bias", "metadata"}
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .._rundir import replace_atomically, save_tensors, write_text_atomic
from ..errors import UniversalityError, short_repr
from ._files import read_json_object, read_safetensors, size, topk_k
from ._libraries import load_dictionary_learning, load_saelens, load_sparsify
from ._sae import ACTIVATIONS, SAE

__all__ = ["load", "save", "FORMATS"]

_FORMAT_NAME, _FORMAT_VERSION = "universality-sae", 1
_WEIGHTS, _CONFIG = "sae.safetensors", "sae.json"


def save(sae: SAE, directory: str | Path) -> Path:
    """Write `sae` to `directory` in our format (module docstring), each file atomically, sae.json last;
    returns the directory. `sae.metadata` must be plain JSON data.

    >>> import tempfile
    >>> sae = SAE(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2), metadata={"hookpoint": "blocks.0"})
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     load(save(sae, directory)).metadata["hookpoint"]
    'blocks.0'
    """
    sae.validate()
    config = {"format": _FORMAT_NAME, "version": _FORMAT_VERSION, "d_in": sae.d_in, "latents": sae.latents,
              "activation": sae.activation, "k": sae.k, "subtract_decoder_bias": sae.subtract_decoder_bias,
              "metadata": sae.metadata}
    try:
        text = json.dumps(config, indent=1, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise UniversalityError(f"SAE metadata is not plain JSON data ({error}); keep only strings, numbers, "
                                "booleans, None, lists and dicts there") from None
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if sae.threshold is not None else ())
    # clones: safetensors refuses tensors that share memory (a tied W_enc and W_dec)
    tensors = {name: getattr(sae, name).detach().cpu().clone(memory_format=torch.contiguous_format)
               for name in names}
    directory = Path(directory)
    replace_atomically(directory / _WEIGHTS, lambda tmp: save_tensors(tmp, tensors))
    write_text_atomic(directory / _CONFIG, text)
    return directory


def _load_universality(directory: Path) -> SAE:
    """An SAE written by `save`."""
    config_path = directory / _CONFIG
    config = read_json_object(config_path)
    if (config.get("format"), config.get("version")) != (_FORMAT_NAME, _FORMAT_VERSION):
        raise UniversalityError(f"{config_path}: format {short_repr(config.get('format'))} version "
                                f"{short_repr(config.get('version'))} is not {_FORMAT_NAME} version {_FORMAT_VERSION}; "
                                "this version of universality cannot read it")
    d_in, latents = size(config, "d_in", config_path), size(config, "latents", config_path)
    activation, k = config.get("activation"), config.get("k")
    if activation not in ACTIVATIONS:
        raise UniversalityError(f"{config_path}: activation {short_repr(activation)} is not one of "
                                f"{', '.join(ACTIVATIONS)}")
    if k is not None or activation in ("topk", "batchtopk"):
        k = topk_k(k, latents, config_path)
    subtract, metadata = config.get("subtract_decoder_bias"), config.get("metadata", {})
    if not isinstance(subtract, bool) or not isinstance(metadata, dict):
        raise UniversalityError(f"{config_path}: subtract_decoder_bias must be true or false and metadata an object")
    weights = read_safetensors(directory / _WEIGHTS)
    W_enc, b_enc = weights.take("W_enc", (latents, d_in)), weights.take("b_enc", (latents,))
    W_dec, b_dec = weights.take("W_dec", (latents, d_in)), weights.take("b_dec", (d_in,))
    threshold = None
    if activation == "jumprelu":
        threshold = weights.take("threshold", (latents,))
    elif activation == "batchtopk" and weights.has("threshold"):
        threshold = weights.take("threshold", ())
    weights.check_all_taken(f"a {activation} SAE in {_FORMAT_NAME} format")
    return SAE(W_enc, b_enc, W_dec, b_dec, activation, k, threshold, subtract, metadata)


# format name -> (the files that make it up, its loader)
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[Path], SAE]]] = {
    "universality": ((_CONFIG, _WEIGHTS), _load_universality),
    "saelens": (("cfg.json", "sae_weights.safetensors"), load_saelens),
    "sparsify": (("cfg.json", "sae.safetensors"), load_sparsify),
    "dictionary_learning": (("config.json", "ae.pt"), load_dictionary_learning),
}
_KNOWN_FILES = sorted({name for files, _ in FORMATS.values() for name in files})
_LAYOUTS = "; ".join(f"{name}: {' + '.join(files)}" for name, (files, _) in FORMATS.items())


def load(path: str | Path) -> SAE:
    """The SAE in directory `path` (or in the directory of file `path`), in any format of `FORMATS`:
    float32, `W_enc` / `W_dec` [latents, d_in], `metadata` with "format", "path" and where known "hookpoint".

    >>> import tempfile
    >>> sae = SAE(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2), "topk", k=1)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     loaded = load(save(sae, directory))
    >>> loaded.activation, loaded.k, loaded.metadata["format"]
    ('topk', 1, 'universality')
    """
    path = Path(path)
    if not path.exists():
        raise UniversalityError(f"{path}: no such file or directory")
    if path.is_file() and path.name not in _KNOWN_FILES:
        raise UniversalityError(f"{path}: not a file of a known SAE format; pass its directory, which must hold "
                                f"one of: {_LAYOUTS}")
    directory = path if path.is_dir() else path.parent
    present = {name for name in _KNOWN_FILES if (directory / name).is_file()}
    candidates = {name: files for name, (files, _) in FORMATS.items() if path.is_dir() or path.name in files}
    complete = [name for name, files in candidates.items() if set(files) <= present]
    if len(complete) > 1:
        raise UniversalityError(f"{directory}: holds the files of several SAE formats ({', '.join(complete)}); "
                                "keep one SAE per directory")
    if not complete:
        partial = [f"{name} needs {' + '.join(files)} (missing {', '.join(f for f in files if f not in present)})"
                   for name, files in candidates.items() if present & set(files)]
        if partial:
            raise UniversalityError(f"{directory}: incomplete SAE: {'; '.join(partial)}")
        raise UniversalityError(f"{directory}: no SAE files found; expected one of: {_LAYOUTS}"
                                f"{_subdirectory_hint(directory)}")
    name = complete[0]
    sae = FORMATS[name][1](directory)
    sae.metadata.update(format=name, path=str(directory.resolve()))
    return sae


def _subdirectory_hint(directory: Path) -> str:
    """"; pass one of its subdirectories that hold SAEs: ..." when SAEs sit one level down (a sparsify run
    keeps one per hookpoint), else ""."""
    inside = sorted(child.name for child in directory.iterdir()
                    if child.is_dir() and any((child / name).is_file() for name in _KNOWN_FILES))
    if not inside:
        return ""
    shown = ", ".join(inside[:5]) + (f" and {len(inside) - 5} more" if len(inside) > 5 else "")
    return f"; pass one of its subdirectories that hold SAEs: {shown}"
