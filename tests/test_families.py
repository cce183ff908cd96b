"""Neuron families by variance reduction: a dense float64 reference for every feature, planted neurons
of each family, and streaming / merging invariants."""

import math
import string

import numpy as np
import pandas as pd
import pytest
import torch

from universality.neurons._families import (FamilyAccumulator, alphabet, label_features, position_buckets,
                                            previous_token, row_context, token_strings, unigram)
from universality.errors import UniversalityError

VOCAB = ["Ġthe", "The", "7", "42", ".", "!?", "a", "Ġb", "apple", "Ġant", "Bee", "x1"]  # 12 tokens
ROWS, POS = 60, 16


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _data(seed=0, units=6):
    """tokens [ROWS, POS], labels {"class", "depth"} [ROWS, POS] (depth -1 = unlabelled), random activations
    [ROWS * POS, units] with a large offset and some dependence on tokens and positions."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, len(VOCAB), (ROWS, POS), generator=g)
    labels = {"class": torch.randint(0, 4, (ROWS, POS), generator=g),
              "depth": torch.randint(-1, 3, (ROWS, POS), generator=g)}
    acts = torch.randn(ROWS * POS, units, generator=g, dtype=torch.float64) + 1e3
    acts[:, 0] += 0.5 * (tokens.reshape(-1) % 3)
    acts[:, 1] += 0.1 * torch.arange(POS).repeat(ROWS)
    return tokens, labels, acts


def _sets():
    return [unigram(VOCAB), previous_token(), position_buckets([0, 1, 5, 9]), token_strings(VOCAB),
            alphabet(VOCAB), token_strings(VOCAB, previous=True), label_features("class"), label_features("depth")]


def _filled(tokens, labels, acts, batch_rows, sets=None, min_count=10):
    acc = FamilyAccumulator(sets or _sets(), acts.shape[1], min_count=min_count)
    for start in range(0, ROWS, batch_rows):
        rows = slice(start, start + batch_rows)
        acc.update(acts[rows.start * POS:rows.stop * POS],
                   **row_context(tokens[rows], {k: v[rows] for k, v in labels.items()}))
    return acc


def _reference_vr(acts, mask, min_count):
    """1 - (p_F Var(a | not f) + p_T Var(a | f)) / Var(a), population variances, float64 numpy [units]."""
    a, mask = acts.numpy(), mask.numpy()
    n_true = mask.sum()
    if n_true < min_count or len(mask) - n_true < min_count:
        return np.full(a.shape[1], np.nan)
    within = n_true * a[mask].var(0) + (~mask).sum() * a[~mask].var(0)
    return 1 - within / len(mask) / a.var(0)


def _masks(tokens, labels):
    """{set name: {feature name: bool [tokens]}} straight from the definitions."""
    flat = tokens.reshape(-1)
    prev = row_context(tokens)["prev_ids"]
    positions = torch.arange(POS).repeat(ROWS)
    words = [t[1:] if t.startswith("Ġ") else t for t in VOCAB]

    def by_token(ids, test):
        lookup = torch.tensor([test(t, w) for t, w in zip(VOCAB, words)])
        return (ids >= 0) & lookup[ids.clamp_min(0)]

    strings = {"starts_with_space": lambda t, w: t.startswith("Ġ"), "capitalised": lambda t, w: w[0].isupper(),
               "digit": lambda t, w: w.isdigit(), "punctuation": lambda t, w: w in (".", "!?"),
               "single_letter": lambda t, w: w in ("a", "b")}
    return {
        "unigram": {VOCAB[v]: flat == v for v in range(len(VOCAB))},
        "prev_token": {v: prev == v for v in range(len(VOCAB))},
        "position": {"[0, 1)": positions == 0, "[1, 5)": (positions >= 1) & (positions < 5),
                     "[5, 9)": (positions >= 5) & (positions < 9), "[9, ...)": positions >= 9},
        "token_string": {k: by_token(flat, f) for k, f in strings.items()},
        "alphabet": {x: by_token(flat, lambda t, w, x=x: w[0].lower() == x) for x in string.ascii_lowercase},
        "prev_token_string": {k: by_token(prev, f) for k, f in strings.items()},
        "class": {c: labels["class"].reshape(-1) == c for c in range(4)},
        "depth": {c: labels["depth"].reshape(-1) == c for c in range(3)},
    }


def test_vr_equals_dense_float64_reference_for_every_feature():
    tokens, labels, acts = _data()
    acc = _filled(tokens, labels, acts, batch_rows=7, min_count=30)
    checked = 0
    for name, features in _masks(tokens, labels).items():
        names, vr = acc.variance_reductions(name)
        assert names == list(features), name
        expected = np.stack([_reference_vr(acts, mask, 30) for mask in features.values()])
        np.testing.assert_allclose(vr.numpy(), expected, rtol=1e-8, atol=1e-12, err_msg=name)
        checked += np.isfinite(expected).all(axis=1).sum()
    assert checked > 40  # most features have >= 30 tokens on each side: the comparison is not vacuous


def test_rare_features_are_skipped():
    tokens, labels, acts = _data()
    acc = _filled(tokens, labels, acts, batch_rows=ROWS)
    names, vr = acc.variance_reductions("position")
    counts = [POS * ROWS * share for share in (1 / 16, 4 / 16, 4 / 16, 7 / 16)]
    assert all(c >= 10 for c in counts) and torch.isfinite(vr).all()
    strict = _filled(tokens, labels, acts, batch_rows=ROWS, min_count=ROWS + 1)  # [0, 1) has ROWS tokens
    assert torch.isnan(strict.variance_reductions("position")[1][0]).all()
    assert torch.isfinite(strict.variance_reductions("position")[1][1:]).all()


def test_planted_neurons_get_their_family():
    g = torch.Generator().manual_seed(1)
    tokens, labels, _ = _data(seed=1)
    flat, prev = tokens.reshape(-1), row_context(tokens)["prev_ids"]
    positions = torch.arange(POS).repeat(ROWS)
    starts_with_a = torch.tensor([w.lstrip("Ġ").startswith("a") for w in VOCAB])
    planted = torch.stack([(flat == 7), (prev == 3), (positions >= 5) & (positions < 9),
                           labels["class"].reshape(-1) == 2, starts_with_a[flat]], dim=1).double()
    acts = 3 * planted + 0.1 * torch.randn(planted.shape, generator=g, dtype=torch.float64)
    sets = [unigram(), previous_token(), position_buckets([0, 1, 5, 9]), label_features("class"), alphabet(VOCAB)]
    table = _filled(tokens, labels, acts, batch_rows=13, sets=sets).table()
    expected = [("unigram", 7), ("prev_token", 3), ("position", "[5, 9)"), ("class", 2), ("alphabet", "a")]
    assert list(zip(table.best_feature_set, table.best_feature)) == expected
    assert (table.variance_reduction > 0.97).all()  # noise variance 0.01 against 9 p (1 - p) >= 0.69
    for unit, (family, _) in enumerate(expected):
        assert table.loc[unit, f"vr_{family}"] == table.loc[unit, "variance_reduction"]


def test_table_top_ranks_and_readable_names():
    tokens, labels, acts = _data()
    table = _filled(tokens, labels, acts, batch_rows=ROWS).table(top=3)
    assert len(table) == 3 * acts.shape[1] and table["rank"].tolist()[:3] == [1, 2, 3]
    for _, unit in table.groupby("unit"):
        assert unit.variance_reduction.is_monotonic_decreasing
    assert set(table[table.best_feature_set == "unigram"].best_feature) <= set(VOCAB)
    columns = [f"vr_{fs.name}" for fs in _sets()]
    assert list(table.columns) == ["unit", "rank", "best_feature_set", "best_feature", "variance_reduction", *columns]


def test_streaming_in_batches_equals_one_batch():
    tokens, labels, acts = _data()
    one, many = _filled(tokens, labels, acts, batch_rows=ROWS), _filled(tokens, labels, acts, batch_rows=4)
    for fs in _sets():
        torch.testing.assert_close(many.variance_reductions(fs.name)[1], one.variance_reductions(fs.name)[1],
                                   rtol=1e-9, atol=1e-12, equal_nan=True)
    pd.testing.assert_frame_equal(many.table(top=2), one.table(top=2), rtol=1e-9)


def test_merge_equals_single_stream():
    tokens, labels, acts = _data()
    half = ROWS // 3
    split = lambda rows: (tokens[rows], {k: v[rows] for k, v in labels.items()},
                          acts[rows.start * POS:(rows.stop or ROWS) * POS])
    # Shards with different shifts (the second offset by 5) and value ranges (depth 2 absent from the first)
    first_tokens, first_labels, first_acts = split(slice(0, half))
    first_labels["depth"] = first_labels["depth"].clamp_max(1)
    labels["depth"][:half] = first_labels["depth"]
    acts[half * POS:] += 5.0
    left = _filled(first_tokens, first_labels, first_acts, batch_rows=half)
    right = FamilyAccumulator(_sets(), acts.shape[1])
    right.update(acts[half * POS:], **row_context(tokens[half:], {k: v[half:] for k, v in labels.items()}))
    merged, single = left.merge(right), _filled(tokens, labels, acts, batch_rows=ROWS)
    assert merged.count_ == single.count_ and left.count_ == half * POS  # inputs unchanged
    for fs in _sets():
        torch.testing.assert_close(merged.variance_reductions(fs.name)[1], single.variance_reductions(fs.name)[1],
                                   rtol=1e-9, atol=1e-12, equal_nan=True)
    assert math.isclose(right.merge(left).variance_reductions("depth")[1][2, 0],
                        single.variance_reductions("depth")[1][2, 0], rel_tol=1e-9)


def test_inputs_are_checked():
    acc = FamilyAccumulator([unigram(VOCAB), position_buckets([0, 4])], units=2)
    acts = torch.randn(8, 2)
    with pytest.raises(UniversalityError, match="positions"):
        acc.update(acts, token_ids=torch.zeros(8, dtype=torch.long))
    with pytest.raises(UniversalityError, match="out of range"):
        acc.update(acts, token_ids=torch.full((8,), 12), positions=torch.arange(8))
    with pytest.raises(UniversalityError, match=r"expected Tensor\[tokens, units=2\]"):
        acc.update(torch.randn(8, 3), token_ids=torch.zeros(8, dtype=torch.long), positions=torch.arange(8))
    with pytest.raises(UniversalityError, match="distinct names"):
        FamilyAccumulator([unigram(), unigram()], units=2)
    with pytest.raises(UniversalityError, match="choose one of"):
        acc.variance_reductions("bigram")
