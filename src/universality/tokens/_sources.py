"""Token sources for existing models: LongTensor rows [rows, seq_len], each row starting with BOS.

| source                                   | function              |
|------------------------------------------|-----------------------|
| a `datasets` dataset saved to disk       | `tokens_from_dataset` (a text column, or an `input_ids` column) |
| plain text files                         | `tokens_from_text_files` |
| numpy arrays (.npy [rows, seq] or flat)  | `tokens_from_numpy`   |
| any list of token ids                    | `pack_rows`           |

Text is tokenized without special tokens, documents are joined by a separator (EOS, else SEP),
and the stream is cut into rows of `seq_len - 1` tokens, each prefixed with BOS. BOS is the
tokenizer's BOS, else its CLS (encoders), else its EOS: GPT-2 has no separate BOS and uses
`<|endoftext|>`, as Gurnee et al. 2024 do. The tail shorter than a row is dropped.

Token filters (`drop_token_ids`, `keep_mask`) pick the positions to leave out of statistics
(BOS, pad, newline, special tokens), and `check_same_tokenizer` refuses to compare models that
would read one token stream differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UniversalityError

__all__ = ["pack_rows", "tokens_from_dataset", "tokens_from_text_files", "tokens_from_numpy", "bos_token_id_for",
           "drop_token_ids", "keep_mask", "check_same_tokenizer"]

AUTO = "auto"


def _tokenizer_of(source):
    """A tokenizer from a tokenizer or a model adapter (which must have one)."""
    if hasattr(source, "require_tokenizer"):
        return source.require_tokenizer()
    if source is None:
        raise UniversalityError("text needs a tokenizer: pass tokenizer= (a tokenizer or a loaded model)")
    return source


def bos_token_id_for(tokenizer) -> int | None:
    """BOS, else CLS, else EOS (GPT-2 style) of a tokenizer; None when it has none of them."""
    for attr in ("bos_token_id", "cls_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return None


def pack_rows(ids: Sequence[int] | torch.Tensor | np.ndarray, *, seq_len: int, bos_token_id: int | None = None,
              max_rows: int | None = None) -> torch.Tensor:
    """Cut a flat token stream into LongTensor [rows, seq_len], each row BOS + `seq_len - 1` tokens
    (or `seq_len` tokens when `bos_token_id` is None); the incomplete tail is dropped.

    >>> pack_rows(list(range(1, 8)), seq_len=3, bos_token_id=0).tolist()
    [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    """
    body = seq_len - (bos_token_id is not None)
    if body < 1:
        raise UniversalityError(f"seq_len must leave room for at least one token after BOS, got seq_len={seq_len}")
    flat = torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(-1)
    rows = flat.numel() // body
    if max_rows is not None:
        rows = min(rows, max_rows)
    if rows == 0:
        raise UniversalityError(f"only {flat.numel()} tokens: not enough for one row of {seq_len}; "
                                "use more text or a shorter seq_len")
    out = flat[:rows * body].view(rows, body)  # [rows, body]
    if bos_token_id is not None:
        out = torch.cat([torch.full((rows, 1), bos_token_id, dtype=torch.long), out], dim=1)  # [rows, seq_len]
    return out.contiguous()


def _texts_to_rows(texts: list[str], tokenizer, *, seq_len, bos_token_id, max_rows) -> torch.Tensor:
    tokenizer = _tokenizer_of(tokenizer)
    bos = bos_token_id_for(tokenizer) if bos_token_id == AUTO else bos_token_id
    separator = next((v for v in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None))
                      if isinstance(v, int)), None)
    stream: list[int] = []
    body = seq_len - (bos is not None)
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # rows are cut below
        if separator is not None:
            stream.append(separator)
        if max_rows is not None and len(stream) >= max_rows * body:
            break
    return pack_rows(stream, seq_len=seq_len, bos_token_id=bos, max_rows=max_rows)


def tokens_from_text_files(paths: str | Path | Sequence[str | Path], tokenizer, *, seq_len: int,
                           bos_token_id: int | None | str = AUTO, max_rows: int | None = None) -> torch.Tensor:
    """Rows [rows, seq_len] from UTF-8 text files (each file one document), tokenized with
    `tokenizer` (a tokenizer, or a loaded model whose tokenizer is used)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    texts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UniversalityError(f"text file {str(path)!r} does not exist")
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return _texts_to_rows(texts, tokenizer, seq_len=seq_len, bos_token_id=bos_token_id, max_rows=max_rows)


def tokens_from_dataset(path: str | Path, *, seq_len: int, tokenizer=None, column: str = "text",
                        split: str | None = None, bos_token_id: int | None | str = AUTO,
                        max_rows: int | None = None) -> torch.Tensor:
    """Rows [rows, seq_len] from a Hugging Face dataset saved with `save_to_disk`.

    A `column` of text is tokenized and packed (see the module docstring). An `input_ids` column
    (used when `column` is absent or is "input_ids") is taken row by row when its rows are at
    least `seq_len` long (truncated to `seq_len`, no BOS added), and packed like text otherwise.
    """
    import datasets
    if not Path(path).is_dir():
        raise UniversalityError(f"dataset directory {str(path)!r} does not exist")
    try:
        data = datasets.load_from_disk(str(path))
    except Exception:
        raise UniversalityError(f"{str(path)!r} is not a dataset saved with save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise UniversalityError(f"choose a split of {str(path)!r} with split=: {', '.join(data)}")
        data = data[split]
    if column in data.column_names and column != "input_ids":
        return _texts_to_rows(list(data[column]), tokenizer, seq_len=seq_len, bos_token_id=bos_token_id,
                              max_rows=max_rows)
    if "input_ids" not in data.column_names:
        raise UniversalityError(f"dataset {str(path)!r} has no column {column!r} and no 'input_ids'; "
                                f"columns: {', '.join(data.column_names)}")
    rows = list(data["input_ids"])
    if rows and min(len(r) for r in rows) >= seq_len:
        return torch.tensor([r[:seq_len] for r in rows[:max_rows]], dtype=torch.long)  # [rows, seq_len]
    bos = None if bos_token_id == AUTO and tokenizer is None else (
        bos_token_id_for(_tokenizer_of(tokenizer)) if bos_token_id == AUTO else bos_token_id)
    return pack_rows([t for r in rows for t in r], seq_len=seq_len, bos_token_id=bos, max_rows=max_rows)


def tokens_from_numpy(source: str | Path | np.ndarray, *, seq_len: int | None = None,
                      bos_token_id: int | None = None, max_rows: int | None = None) -> torch.Tensor:
    """Rows [rows, seq_len] from an integer array (or a .npy file): [rows, seq] is taken as rows
    (truncated to `seq_len` when given); a flat [tokens] stream is packed with `pack_rows`."""
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise UniversalityError(f"token file {str(source)!r} does not exist")
        try:
            source = np.load(source, mmap_mode="r")
        except Exception:
            raise UniversalityError(f"{str(source)!r} is not a .npy array file") from None
    array = np.asarray(source)
    if not np.issubdtype(array.dtype, np.integer):
        raise UniversalityError(f"token arrays must hold integers, got dtype {array.dtype}")
    if array.ndim == 2:
        rows = array[:max_rows, :seq_len] if seq_len else array[:max_rows]
        return torch.as_tensor(np.ascontiguousarray(rows, dtype=np.int64))
    if array.ndim == 1:
        if seq_len is None:
            raise UniversalityError("a flat token array needs seq_len= to be cut into rows")
        return pack_rows(array, seq_len=seq_len, bos_token_id=bos_token_id, max_rows=max_rows)
    raise UniversalityError(f"token arrays must be [rows, seq] or flat [tokens], got shape {list(array.shape)}")


def drop_token_ids(source, *, bos: bool = True, pad: bool = True, newline: bool = False,
                   special: bool = False) -> list[int]:
    """Token ids to leave out of statistics, from a model adapter or a tokenizer.

    bos : BOS (for encoders CLS; GPT-2: `<|endoftext|>`), whose activations are constant per model
    pad : the pad token
    newline : every token that decodes to whitespace containing a newline (needs a tokenizer)
    special : every special token of the tokenizer (CLS, SEP, MASK, ...)
    """
    is_model = hasattr(source, "unit_sets")
    ids: list[int | None] = []
    if bos:
        ids.append(source.bos_token_id if is_model else bos_token_id_for(source))
    if pad:
        ids.append(source.pad_token_id if is_model else getattr(source, "pad_token_id", None))
    if newline or special:
        tokenizer = _tokenizer_of(source)
        if special:
            ids += list(tokenizer.all_special_ids)
        if newline:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            ids += [i for i, text in enumerate(texts) if "\n" in text and not text.strip()]
    return sorted({int(i) for i in ids if i is not None})


def keep_mask(tokens: torch.Tensor, drop_ids: Sequence[int], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [rows, pos]: True where the token is not in `drop_ids` (and not masked out).

    >>> keep_mask(torch.tensor([[0, 5, 6, 1]]), [0, 1]).tolist()
    [[False, True, True, False]]
    """
    keep = ~torch.isin(tokens, torch.as_tensor(list(drop_ids), dtype=tokens.dtype, device=tokens.device))
    if attention_mask is not None:
        keep &= attention_mask.to(keep.device).bool()
    return keep


def check_same_tokenizer(adapters) -> None:
    """Raise when two models (a {name: adapter} dict or a list) would read one token stream
    differently: different vocabulary sizes, or tokenizers mapping some token to different ids."""
    named = dict(adapters) if isinstance(adapters, dict) else {a.name: a for a in adapters}
    items = list(named.items())
    if not items:
        return
    first, ref = items[0]
    ref_vocab = ref.tokenizer.get_vocab() if ref.tokenizer is not None else None
    for name, other in items[1:]:
        if other.vocab_size != ref.vocab_size:
            raise UniversalityError(f"models {first!r} and {name!r} have different vocabularies ({ref.vocab_size} vs "
                                    f"{other.vocab_size} tokens); compare models on one token stream only when they "
                                    "share a tokenizer")
        if ref_vocab is None or other.tokenizer is None:
            continue
        vocab = other.tokenizer.get_vocab()
        if vocab != ref_vocab:
            diff = sorted(set(ref_vocab.items()) ^ set(vocab.items()))
            token = diff[0][0] if diff else "?"
            raise UniversalityError(f"models {first!r} and {name!r} have different tokenizers (token {token!r} is "
                                    f"{ref_vocab.get(token)} vs {vocab.get(token)}); compare models on one token "
                                    "stream only when they share a tokenizer")
