import math

import numpy as np
import pandas as pd
import pytest
import torch

from universality import UniversalityError
from universality.posterior import PredictiveSums, cluster_universality, divergences, seed_clusters


def _log_probs(models=3, positions=50, classes=7, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(models, positions, classes, generator=g, dtype=torch.float64), -1)


def _direct(log_probs, targets):
    """Float64 reference, position by position."""
    k, p, _ = log_probs.shape
    kl = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            kl[a, b] = float((log_probs[a].exp() * (log_probs[a] - log_probs[b])).sum(-1).mean())
    loss = np.array([-float(log_probs[m, torch.arange(p), targets].mean()) for m in range(k)])
    mixture = -float(torch.log(log_probs[:, torch.arange(p), targets].exp().mean(0)).mean())
    return kl, loss, mixture


def test_batched_sums_equal_a_direct_float64_computation():
    log_probs, targets = _log_probs(), torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1))
    sums = PredictiveSums(["a", "b", "c"])
    for start in range(0, 50, 16):  # batches of positions, the last one short
        sums.update(log_probs[:, start:start + 16].float(), targets[start:start + 16])
    d = divergences(sums)
    kl, loss, mixture = _direct(log_probs.float().double(), targets)
    np.testing.assert_allclose(d.kl, kl, atol=1e-10)
    np.testing.assert_allclose(d.symmetric, (kl + kl.T) / 2, atol=1e-10)
    np.testing.assert_allclose(d.log_loss, loss, atol=1e-12)
    assert d.mixture_log_loss == pytest.approx(mixture, abs=1e-12)
    assert d.regret == pytest.approx(mixture - loss.min(), abs=1e-12) and d.positions == 50


def test_merge_of_shards_equals_one_pass():
    log_probs, targets = _log_probs(), torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(2))
    whole = divergences(PredictiveSums(list("abc")).update(log_probs, targets))
    merged = divergences(PredictiveSums(list("abc")).update(log_probs[:, :20], targets[:20]).merge(
        PredictiveSums(list("abc")).update(log_probs[:, 20:], targets[20:])))
    np.testing.assert_allclose(merged.kl, whole.kl, atol=1e-12)
    assert merged.mixture_log_loss == pytest.approx(whole.mixture_log_loss, abs=1e-12)


def test_mixture_log_loss_is_at_most_the_seeds_mean_and_equals_a_seed_when_all_agree():
    log_probs, targets = _log_probs(models=4), torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(3))
    d = divergences(PredictiveSums(list("abcd")).update(log_probs, targets))
    assert d.mixture_log_loss <= d.log_loss.mean() and d.mixture_log_loss < d.log_loss.mean() - 1e-3
    same = divergences(PredictiveSums(list("abcd")).update(log_probs[:1].expand(4, -1, -1), targets))
    assert same.mixture_log_loss == pytest.approx(same.log_loss[0], abs=1e-12) and abs(same.regret) < 1e-12
    assert np.abs(same.kl).max() < 1e-12


def test_two_planted_groups_of_identical_models_give_two_clusters_of_their_weights():
    base = _log_probs(models=2, scale=3.0)
    log_probs = torch.stack([base[0], base[0], base[0], base[1], base[1]])  # 3 copies of one solution, 2 of another
    d = divergences(PredictiveSums(list("abcde")).update(log_probs, torch.zeros(50, dtype=torch.long)))
    assert d.symmetric[0, 3] > 0.5
    for linkage in ("single", "average"):
        clusters = seed_clusters(list("abcde"), d.symmetric, threshold=0.1, linkage=linkage)
        assert clusters.cluster.tolist() == [0, 0, 0, 1, 1]
        assert clusters.cluster_weight.tolist() == [0.6, 0.6, 0.6, 0.4, 0.4]
    assert seed_clusters(list("abcde"), d.symmetric, threshold=1e3).cluster.nunique() == 1


def test_bad_inputs_are_one_line_errors():
    sums = PredictiveSums(["a", "b"])
    with pytest.raises(UniversalityError, match="models=2"):
        sums.update(_log_probs(models=3), torch.zeros(50, dtype=torch.long))
    with pytest.raises(UniversalityError, match="class indices"):
        sums.update(_log_probs(models=2), torch.full((50,), 7))
    with pytest.raises(UniversalityError, match="no positions"):
        divergences(sums)
    with pytest.raises(UniversalityError, match="linkage"):
        seed_clusters(["a", "b"], np.zeros((2, 2)), threshold=0.1, linkage="ward2")


def test_units_universal_within_a_cluster_are_counted_from_its_own_seeds():
    # seeds a, b in cluster 0; c alone. unit 0 of a and b: excess 0.8 against each other, 0 against c
    # (within 0.8: universal; across (0.8 + 0) / 2 = 0.4: not at 0.5). unit 1: 0.6 everywhere (both).
    rows = []
    for model in "abc":
        for other in "abc":
            if other == model:
                continue
            same = {model, other} == {"a", "b"}
            rows.append((model, "s", 0, other, 0.9 if same else 0.1, 0.1))
            rows.append((model, "s", 1, other, 0.7, 0.1))
    pairs = pd.DataFrame(rows, columns=["model", "unit_set", "unit", "other_model", "max_corr", "baseline_max_corr"])
    clusters = pd.DataFrame({"model": list("abc"), "cluster": [0, 0, 1]})
    table = cluster_universality(pairs, clusters, threshold=0.5)
    assert table.to_dict("records") == [{"cluster": 0, "seeds": "a b", "universal_within": 4, "universal_across": 2,
                                         "both": 2, "jaccard": 0.5}]
    with pytest.raises(UniversalityError, match="pairs table"):
        cluster_universality(pairs, pd.DataFrame({"model": ["z"], "cluster": [0]}), threshold=0.5)


def _group_record(tmp_path):
    """Three S3 models (b an exact copy of a) on every pair, a hand-made pairs table, and the step's inputs."""
    from types import SimpleNamespace

    from universality.models import GroupMLP, adapt
    from universality.pipeline._posterior import Predictions
    from universality.pipeline._report import RunRecord

    a, c = GroupMLP(6, embed_dim=8, hidden=16, seed=0), GroupMLP(6, embed_dim=8, hidden=16, seed=1)
    adapters = {"a": adapt(a, name="a"), "b": adapt(a, name="b"), "c": adapt(c, name="c")}
    inputs, targets = torch.arange(36).reshape(-1, 1), torch.randint(0, 6, (36, 1), generator=torch.Generator().manual_seed(0))
    pairs = pd.DataFrame([(m, "s", 0, o, 0.9, 0.1) for m in "abc" for o in "abc" if o != m],
                         columns=["model", "unit_set", "unit", "other_model", "max_corr", "baseline_max_corr"])
    record = RunRecord(SimpleNamespace(pairs=pairs, threshold=0.5), {}, {}, {},
                       predictions=Predictions(adapters, inputs, targets, 10, "models-and-data"))
    (tmp_path / "tables").mkdir()
    return record, adapters, inputs, targets


def test_seeds_step_matches_a_direct_computation_and_skips_when_unchanged(tmp_path):
    import dataclasses

    from universality.config import PosteriorConfig
    from universality.pipeline._posterior import posterior_step

    record, adapters, inputs, targets = _group_record(tmp_path)
    settings = PosteriorConfig(threshold=1e-9)
    done = posterior_step(tmp_path, record, settings, compared_print="compared")
    log_probs = torch.stack([torch.log_softmax(adapters[m].logits(inputs)[:, 0].double(), -1) for m in "abc"])
    kl, loss, mixture = _direct(log_probs, targets[:, 0])
    table = done.tables["seed_kl"].set_index(["model_a", "model_b"])
    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            if i != j:
                assert table.kl[(x, y)] == pytest.approx(kl[i, j], abs=1e-9)
    seeds = done.tables["seeds"]
    np.testing.assert_allclose(seeds.log_loss, loss, atol=1e-9)
    assert seeds.mixture_log_loss.iloc[0] == pytest.approx(mixture, abs=1e-9)
    assert seeds.cluster.tolist() == [0, 0, 1] and seeds.cluster_weight.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert done.tables["seed_clusters"].seeds.tolist() == ["a b"] and "seeds as posterior samples" in done.facts
    # unchanged inputs: the saved tables, no model is run
    broken = dataclasses.replace(record.predictions, adapters={m: None for m in "abc"})
    again = posterior_step(tmp_path, dataclasses.replace(record, predictions=broken), settings, compared_print="compared")
    pd.testing.assert_frame_equal(again.tables["seed_kl"], done.tables["seed_kl"])
    # disabled: nothing; no predictive distributions: a note
    assert posterior_step(tmp_path, record, PosteriorConfig(enabled=False), "compared") is record
    left_out = posterior_step(tmp_path, dataclasses.replace(record, predictions=None), settings, "compared")
    assert "seeds" not in left_out.tables and "left out" in left_out.notes[-1]
