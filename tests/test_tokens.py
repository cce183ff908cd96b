"""Token datasets for real models: rows [rows, seq_len] from datasets on disk, text files and numpy
arrays; token filters; the shared-tokenizer check."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from _hf_tiny import SENTENCES, bpe_tokenizer, build, wordpiece_tokenizer  # noqa: E402

from universality import UniversalityError, load_model  # noqa: E402
from universality.config import ModelConfig  # noqa: E402
from universality.models import TinyTransformer, adapt  # noqa: E402
from universality.tokens import (bos_token_id_for, check_same_tokenizer, drop_token_ids, keep_mask,  # noqa: E402
                                pack_rows, tokens_from_dataset, tokens_from_numpy, tokens_from_text_files)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2 style: `<|endoftext|>` is EOS and there is no separate BOS."""
    tok = bpe_tokenizer()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>")


def test_pack_rows_prefixes_bos_and_drops_the_tail():
    rows = pack_rows(torch.arange(1, 11), seq_len=4, bos_token_id=0)
    assert rows.tolist() == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9]] and rows.dtype == torch.long
    assert pack_rows(np.arange(10), seq_len=5).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert pack_rows(range(100), seq_len=4, bos_token_id=0, max_rows=2).shape == (2, 4)
    with pytest.raises(UniversalityError, match="not enough for one row"):
        pack_rows([1, 2], seq_len=8, bos_token_id=0)


def test_gpt2_style_tokenizer_uses_eos_as_bos(gpt2_tokenizer):
    assert gpt2_tokenizer.bos_token_id is None
    assert bos_token_id_for(gpt2_tokenizer) == gpt2_tokenizer.eos_token_id


def test_text_files_become_rows_that_start_with_bos_and_keep_the_token_stream(tmp_path, gpt2_tokenizer):
    files = []
    for i, text in enumerate(SENTENCES[:4]):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text)
    rows = tokens_from_text_files(files, gpt2_tokenizer, seq_len=8)
    eos = gpt2_tokenizer.eos_token_id
    assert rows.shape[1] == 8 and (rows[:, 0] == eos).all()
    stream = []
    for text in SENTENCES[:4]:
        stream += gpt2_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert rows[:, 1:].reshape(-1).tolist() == stream[:rows.shape[0] * 7]
    assert tokens_from_text_files(files, gpt2_tokenizer, seq_len=8, max_rows=2).shape == (2, 8)
    with pytest.raises(UniversalityError, match="does not exist"):
        tokens_from_text_files(tmp_path / "missing.txt", gpt2_tokenizer, seq_len=8)


def test_text_needs_a_tokenizer_and_says_so(tmp_path):
    tiny = adapt(TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=1), vocab_size=10, n_ctx=8))
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(UniversalityError, match="has no tokenizer") as error:
        tokens_from_text_files(tmp_path / "a.txt", tiny, seq_len=4)
    assert "\n" not in str(error.value)


def test_dataset_on_disk_text_column_and_input_ids(tmp_path, gpt2_tokenizer):
    datasets.Dataset.from_dict({"text": SENTENCES}).save_to_disk(tmp_path / "text")
    rows = tokens_from_dataset(tmp_path / "text", tokenizer=gpt2_tokenizer, seq_len=8)
    assert rows.shape[1] == 8 and (rows[:, 0] == gpt2_tokenizer.eos_token_id).all()
    assert torch.equal(rows, tokens_from_text_files(_write(tmp_path, SENTENCES), gpt2_tokenizer, seq_len=8))
    fixed = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    datasets.Dataset.from_dict({"input_ids": fixed}).save_to_disk(tmp_path / "ids")
    assert tokens_from_dataset(tmp_path / "ids", seq_len=4).tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]}).save_to_disk(tmp_path / "ragged")
    assert tokens_from_dataset(tmp_path / "ragged", seq_len=4, bos_token_id=0).tolist() == [[0, 1, 2, 3], [0, 4, 5, 6]]


def _write(tmp_path, texts):
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"t{i}.txt")
        paths[-1].write_text(text)
    return paths


def test_dataset_errors_name_the_choices(tmp_path, gpt2_tokenizer):
    with pytest.raises(UniversalityError, match="does not exist"):
        tokens_from_dataset(tmp_path / "none", seq_len=8)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["a b"]}),
                               "test": datasets.Dataset.from_dict({"body": ["c d"]})})
    dd.save_to_disk(tmp_path / "dd")
    with pytest.raises(UniversalityError, match="choose a split .*: train, test"):
        tokens_from_dataset(tmp_path / "dd", seq_len=8, tokenizer=gpt2_tokenizer)
    with pytest.raises(UniversalityError, match="no column 'text' and no 'input_ids'; columns: body"):
        tokens_from_dataset(tmp_path / "dd", split="train", seq_len=8, tokenizer=gpt2_tokenizer)


def test_numpy_rows_and_flat_streams(tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    assert tokens_from_numpy(tmp_path / "rows.npy").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert tokens_from_numpy(tmp_path / "rows.npy", seq_len=2, max_rows=2).tolist() == [[0, 1], [4, 5]]
    np.save(tmp_path / "flat.npy", np.arange(1, 10, dtype=np.uint16))
    assert tokens_from_numpy(tmp_path / "flat.npy", seq_len=3, bos_token_id=0).tolist() == [[0, 1, 2], [0, 3, 4],
                                                                                            [0, 5, 6], [0, 7, 8]]
    with pytest.raises(UniversalityError, match="needs seq_len"):
        tokens_from_numpy(tmp_path / "flat.npy")
    with pytest.raises(UniversalityError, match="must hold integers"):
        tokens_from_numpy(np.zeros((2, 3)))


def test_token_filters_drop_bos_pad_newline_and_special_tokens(tmp_path):
    bert = wordpiece_tokenizer()
    ids = drop_token_ids(bert)
    assert ids == sorted([bert.cls_token_id, bert.pad_token_id])
    assert set(drop_token_ids(bert, special=True)) >= {bert.sep_token_id, bert.mask_token_id}
    assert drop_token_ids(bert, bos=False, pad=False) == []
    gpt = bpe_tokenizer(SENTENCES + ["line one\nline two\n\n"])
    newline = drop_token_ids(gpt, bos=False, pad=False, newline=True)
    assert newline and all("\n" in gpt.decode([i]) and not gpt.decode([i]).strip() for i in newline)
    assert gpt("a\nb", add_special_tokens=False)["input_ids"][1] in newline
    tokens = torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert keep_mask(tokens, [0], mask).tolist() == [[False, True, True, True], [False, True, False, False]]


def test_token_filters_of_a_loaded_model_use_its_special_ids(tmp_path):
    build("bert", tmp_path)
    adapter = load_model(tmp_path)
    assert drop_token_ids(adapter) == sorted([adapter.tokenizer.cls_token_id, adapter.tokenizer.pad_token_id])


def test_check_same_tokenizer_names_the_two_models(tmp_path):
    build("gpt2", tmp_path / "a")
    build("gpt2", tmp_path / "b", seed=1)
    build("bert", tmp_path / "c")
    a, b, c = (load_model(tmp_path / n) for n in "abc")
    check_same_tokenizer({"a": a, "b": b})  # same tokenizer, different seeds: fine
    with pytest.raises(UniversalityError, match="models 'a' and 'c' have different vocabularies") as error:
        check_same_tokenizer({"a": a, "b": b, "c": c})
    assert "\n" not in str(error.value)
