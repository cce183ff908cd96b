"""`TopActivations`: top k per unit against a direct float64 reference, shard merges, ties, histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.errors import UniversalityError
from universality.moments import TopActivations, log_bin_edges

LAYOUT = {"seed-0": {"blocks.0.mlp.hook_post": 5, "blocks.1.mlp.hook_post": 3}, "seed-1": {"units": 4}}


def make_stream(tokens=300, batch=37, seed=0, ties=False):
    """Batches of activations with global token ids (shuffled, not contiguous) and the whole stream."""
    generator = torch.Generator().manual_seed(seed)
    whole = {m: {s: torch.randn(tokens, n, generator=generator) * 3 for s, n in sets.items()}
             for m, sets in LAYOUT.items()}
    if ties:  # ReLU-like: most values exactly 0, some repeated positive values
        whole = {m: {s: torch.relu(x).round() for s, x in sets.items()} for m, sets in whole.items()}
    ids = torch.randperm(10 * tokens, generator=generator)[:tokens]
    batches = [({m: {s: x[i:i + batch] for s, x in sets.items()} for m, sets in whole.items()}, ids[i:i + batch])
               for i in range(0, tokens, batch)]
    return whole, ids, batches


def reference_top(x: np.ndarray, ids: np.ndarray, k: int):
    """Direct float64 top k per column, ties by smaller token id (numpy lexsort)."""
    values, tokens = [], []
    for column in x.T.astype(np.float64):
        order = np.lexsort((ids, -column))[:k]
        values.append(column[order])
        tokens.append(ids[order])
    return np.array(values).T, np.array(tokens).T


def run(batches, k=7):
    top = TopActivations(LAYOUT, k=k)
    for batch, ids in batches:
        top.update(batch, ids)
    return top


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_equals_direct_float64_reference(ties):
    whole, ids, batches = make_stream(ties=ties)
    top = run(batches)
    for m, sets in LAYOUT.items():
        for s in sets:
            values, tokens = reference_top(whole[m][s].numpy(), ids.numpy(), 7)
            np.testing.assert_array_equal(top.values_[m][s].numpy(), values)
            np.testing.assert_array_equal(top.token_ids_[m][s].numpy(), tokens)
    assert top.count_ == 300


def test_ties_do_not_depend_on_batch_order_or_size():
    _, _, batches = make_stream(ties=True)
    forward = run(batches)
    _, _, small = make_stream(ties=True, batch=5)
    backward = run(list(reversed(small)))
    for m, sets in LAYOUT.items():
        for s in sets:
            assert torch.equal(forward.token_ids_[m][s], backward.token_ids_[m][s])
            assert torch.equal(forward.histogram_[m][s], backward.histogram_[m][s])


@pytest.mark.parametrize("ties", [False, True])
def test_sharded_merge_equals_single_pass(ties):
    _, _, batches = make_stream(ties=ties)
    single = run(batches)
    shards = [run(batches[i::3]) for i in range(3)]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.count_ == single.count_
    for m, sets in LAYOUT.items():
        for s in sets:
            assert torch.equal(merged.values_[m][s], single.values_[m][s])
            assert torch.equal(merged.token_ids_[m][s], single.token_ids_[m][s])
            assert torch.equal(merged.histogram_[m][s], single.histogram_[m][s])
    assert shards[0].count_ < single.count_  # merge returned new state, inputs unchanged


def test_histogram_counts_are_exact_on_the_log_grid():
    whole, _, batches = make_stream()
    top = run(batches)
    edges = top.bin_edges.numpy()
    for m, sets in LAYOUT.items():
        for s in sets:
            x = whole[m][s].double().numpy()
            for unit in range(x.shape[1]):
                # bin i holds edges[i-1] < x <= edges[i]: numpy's searchsorted(side="left")
                expected = np.bincount(np.searchsorted(edges, x[:, unit], side="left"), minlength=len(edges) + 1)
                np.testing.assert_array_equal(top.histogram_[m][s][unit].numpy(), expected)
            assert int(top.histogram_[m][s].sum()) == x.size


def test_log_grid_is_symmetric_and_holds_zero_in_the_middle_bin():
    edges = log_bin_edges()
    assert torch.equal(edges, -edges.flip(0)) and len(edges) == 130
    top = TopActivations({"a": {"u": 1}}, k=1)
    top.update({"a": {"u": torch.tensor([[0.0], [1e9], [-1e9]])}}, torch.tensor([0, 1, 2]))
    counts = top.histogram_["a"]["u"][0]
    assert counts[len(edges) // 2] == 1 and counts[0] == 1 and counts[-1] == 1


def test_fewer_tokens_than_k_leaves_unfilled_rows():
    top = TopActivations({"a": {"u": 2}}, k=4)
    top.update({"a": {"u": torch.tensor([[1.0, 2.0]])}}, torch.tensor([9]))
    assert top.token_ids_["a"]["u"][:, 0].tolist() == [9, -1, -1, -1]
    assert torch.isneginf(top.values_["a"]["u"][1:]).all()


def test_state_dict_round_trip_is_plain_tensors():
    _, _, batches = make_stream()
    top = run(batches)
    state = top.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = TopActivations.from_state_dict({**state, "other.key": torch.zeros(1)}, LAYOUT)
    assert again.k == 7 and again.count_ == top.count_
    for m, sets in LAYOUT.items():
        for s in sets:
            assert torch.equal(again.values_[m][s], top.values_[m][s])
            assert torch.equal(again.histogram_[m][s], top.histogram_[m][s])


@pytest.mark.parametrize("bad, match", [
    (lambda b, i: (b, i.float()), "token_ids must be an integer"),
    (lambda b, i: (b, i[:-1]), r"expected Tensor\[36, 5\]"),
    (lambda b, i: ({"seed-0": b["seed-0"]}, i), "differ from the layout"),
    (lambda b, i: ({**b, "seed-1": {"units": b["seed-1"]["units"] * float("nan")}}, i), "NaN or inf"),
])
def test_bad_batches_raise_one_line(bad, match):
    _, _, batches = make_stream()
    top = TopActivations(LAYOUT, k=3)
    with pytest.raises(UniversalityError, match=match):
        top.update(*bad(*batches[0]))


def test_bad_settings_and_mismatched_merge_raise():
    with pytest.raises(UniversalityError, match="k must be an integer >= 1"):
        TopActivations(LAYOUT, k=0)
    with pytest.raises(UniversalityError, match="cannot merge"):
        TopActivations(LAYOUT, k=3).merge(TopActivations(LAYOUT, k=4))
    with pytest.raises(UniversalityError, match="lack"):
        TopActivations.from_state_dict({}, LAYOUT)
