"""SAE latent matching (issue 11 part 3, direct and linear levels): planted shared atoms come back
with precision and recall >= 0.9, a random dictionary scores at the analytic null, MCS and the
Hungarian assignment equal a float64 brute force, the sparse path reproduces the dense one, the
Procrustes level undoes a rotation of one model's space, and bad input is one line."""

import itertools

import numpy as np
import pytest
import torch

from universality import UniversalityError
from universality._one_to_one import candidate_edges, one_to_one
from universality.saes import (PAIR_COLUMNS, SAE, compare_sae_pair, match, match_linear, procrustes_map,
                               random_decoder, random_mcs_expectation, summarize_match, width_coverage)

D_IN = 64
NULL_TOLERANCE = 0.01  # |mean MCS of a random dictionary - analytic expectation|; ~5 standard errors at 300 latents


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _planted(seed: int, latents_a: int = 250, latents_b: int = 300, shared: int = 100, d: int = D_IN):
    """Two dictionaries [latents, d] sharing `shared` atoms (40% of a's) under a permutation: b's copy is
    the atom plus noise of norm 0.2-0.9 in a random direction (cosine ~0.74-0.98, never a sign flip);
    the other atoms of each are random. Returns a, b, truth [latents_a] (b's twin of a's latent, -1: none)."""
    g = torch.Generator().manual_seed(seed)
    atoms = _unit(torch.randn(shared, d, generator=g))
    noise = (0.2 + 0.7 * torch.rand(shared, 1, generator=g)) * _unit(torch.randn(shared, d, generator=g))
    a = torch.cat([atoms, _unit(torch.randn(latents_a - shared, d, generator=g))])
    b = torch.cat([_unit(atoms + noise), _unit(torch.randn(latents_b - shared, d, generator=g))])
    order_a, order_b = torch.randperm(latents_a, generator=g), torch.randperm(latents_b, generator=g)
    where_a, where_b = torch.argsort(order_a).numpy(), torch.argsort(order_b).numpy()  # atom k is at where[k]
    truth = np.full(latents_a, -1)
    truth[where_a[:shared]] = where_b[:shared]
    return a[order_a], b[order_b], truth


def _precision_recall(table, truth) -> tuple[float, float]:
    said = table["shared"].to_numpy()
    right = said & (table["hungarian_partner"].to_numpy() == truth)
    return right.sum() / max(said.sum(), 1), right.sum() / (truth >= 0).sum()


def _noisy_rows(x: torch.Tensor, g: torch.Generator, scale: float = 0.3) -> torch.Tensor:
    return _unit(x + scale * _unit(torch.randn(x.shape, generator=g)))


@pytest.mark.parametrize("dense_limit", [20_000, 100])  # dense Hungarian; sparse candidate graph
def test_planted_shared_atoms_are_recovered_with_precision_and_recall_over_0_9(dense_limit):
    a, b, truth = _planted(0)
    table = match(a, b, dense_limit=dense_limit)
    assert list(table.columns) == ["latent", "mcs", "partner", "hungarian_partner", "hungarian_cos", "shared"]
    precision, recall = _precision_recall(table, truth)
    assert precision >= 0.9 and recall >= 0.9
    assert table.attrs["matching"] == ("hungarian" if dense_limit > 300 else "sparse top-k=16")
    assert table.attrs["coverage_a"] == pytest.approx(0.4, abs=0.05)
    g = torch.Generator().manual_seed(1)
    encoder_a, encoder_b = _noisy_rows(a, g, 0.1), _noisy_rows(b, g, 0.1)  # encoders near their decoders
    with_encoders = match(a, b, encoder_a=encoder_a, encoder_b=encoder_b, dense_limit=dense_limit)
    assert {"mcs_enc", "hungarian_partner_enc", "hungarian_cos_enc"} <= set(with_encoders.columns)
    assert min(_precision_recall(with_encoders, truth)) >= 0.9


def test_shared_needs_the_encoders_to_agree_with_the_decoders():
    a, b, truth = _planted(2)
    g = torch.Generator().manual_seed(3)
    encoder_a, encoder_b = _noisy_rows(a, g, 0.1), _noisy_rows(b, g, 0.1)
    first, second = np.flatnonzero(truth >= 0)[:2]  # two shared latents of a; swap their twins' encoders in b
    p, q = truth[first], truth[second]
    encoder_b[[p, q]] = encoder_b[[q, p]]
    decoders_only = match(a, b)
    table = match(a, b, encoder_a=encoder_a, encoder_b=encoder_b)
    assert table.loc[[first, second], "hungarian_partner_enc"].tolist() == [q, p]
    assert not table.loc[[first, second], "shared"].any()
    others = np.setdiff1d(np.arange(len(a)), [first, second])
    assert (table["shared"].to_numpy()[others] == decoders_only["shared"].to_numpy()[others]).all()


def test_a_random_dictionary_scores_at_the_analytic_null():
    a, _, _ = _planted(4)
    random = random_decoder(300, D_IN, seed=5)
    table = match(a, random)
    assert abs(table["mcs"].mean() - random_mcs_expectation(D_IN, 300)) < NULL_TOLERANCE
    assert table["shared"].mean() == 0
    np.testing.assert_allclose(random.norm(dim=1).numpy(), 1, rtol=1e-6)
    assert torch.equal(random, random_decoder(300, D_IN, seed=5))


def test_the_analytic_null_equals_a_monte_carlo_estimate():
    rng = np.random.default_rng(6)
    for d, latents in ((3, 7), (16, 50), (64, 200), (512, 1000)):
        # cos(e1, v) for Gaussian v is g1 / sqrt(g1^2 + chi2(d - 1)): drawn without the Beta law under test
        g1 = rng.standard_normal((20_000, latents))
        cos = g1 / np.sqrt(g1**2 + rng.chisquare(d - 1, size=g1.shape))
        best = cos.max(axis=1)
        error = best.std() / np.sqrt(len(best))
        assert abs(random_mcs_expectation(d, latents) - best.mean()) < 4 * error, (d, latents)
    assert random_mcs_expectation(3, 3) == pytest.approx(0.5, abs=1e-9)  # cos uniform on [-1, 1]: (L - 1) / (L + 1)


def _brute_force(cos: np.ndarray) -> float:
    """The largest summed cosine of a matching of every row or column of the narrower side."""
    if cos.shape[0] > cos.shape[1]:
        cos = cos.T
    return max(cos[np.arange(cos.shape[0]), list(columns)].sum()
               for columns in itertools.permutations(range(cos.shape[1]), cos.shape[0]))


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (5, 6), (6, 4)])
def test_mcs_and_hungarian_equal_a_float64_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(4):
        a, b = rng.standard_normal((shape[0], 3)), rng.standard_normal((shape[1], 3)) * 5  # rows of any norm
        if trial == 3 and min(shape) > 1:
            a[0] = 0  # a zero decoder row: a dead latent
        unit_a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
        cos = unit_a @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T  # [latents_a, latents_b]
        live = np.linalg.norm(a, axis=1) > 0
        for dense_limit in (100, 1):  # dense; sparse with every edge a candidate
            table = match(torch.from_numpy(a), torch.from_numpy(b), dense_limit=dense_limit, candidates=6)
            np.testing.assert_allclose(table["mcs"][live], cos[live].max(axis=1), atol=1e-12)
            assert (table["partner"][live] == cos[live].argmax(axis=1)).all()
            assert table["mcs"][~live].isna().all() and (table["partner"][~live] == -1).all()
            assigned = table[table["hungarian_partner"] >= 0]
            partners = assigned["hungarian_partner"].to_numpy()
            assert len(set(partners)) == len(partners) == min(live.sum(), shape[1])
            np.testing.assert_allclose(assigned["hungarian_cos"], cos[assigned["latent"], partners], atol=1e-12)
            np.testing.assert_allclose(assigned["hungarian_cos"].sum(), _brute_force(cos[live]), atol=1e-12)


def test_the_sparse_path_reproduces_the_exact_hungarian_assignment():
    a, b, _ = _planted(7, latents_a=300, latents_b=260)
    dense = match(a, b)
    sparse = match(a, b, dense_limit=200)
    assert dense.attrs["matching"] == "hungarian" and sparse.attrs["matching"] == "sparse top-k=16"
    for column in ("partner", "hungarian_partner", "shared"):
        assert (sparse[column] == dense[column]).all(), column
    for column in ("mcs", "hungarian_cos"):
        np.testing.assert_allclose(sparse[column], dense[column], atol=1e-12)
    assert sparse.attrs["left_unmatched"] == 0
    assert width_coverage(a, b, dense_limit=200) == width_coverage(a, b) == (dense.attrs["coverage_a"],
                                                                             dense.attrs["coverage_b"])


def test_the_candidate_graph_holds_every_row_and_column_top_k(monkeypatch):
    import universality._one_to_one as module
    rng = np.random.default_rng(8)
    for trial in range(20):
        rows, columns, k = *rng.integers(1, 40, 2), int(rng.integers(1, 6))
        score = rng.uniform(-1, 1, (rows, columns))
        if trial % 3 == 0:
            score[rng.integers(rows)], score[:, rng.integers(columns)] = np.nan, np.nan  # dead units
        monkeypatch.setattr(module, "_CHUNK", int(rng.integers(1, 200)))  # many row chunks
        edges = candidate_edges(lambda s: score[s], rows, columns, k)
        finite = np.where(np.isfinite(score), score, -np.inf)
        expected = {(i, j) for i in range(rows) for j in np.argsort(-finite[i])[:k] if np.isfinite(finite[i, j])}
        expected |= {(i, j) for j in range(columns) for i in np.argsort(-finite[:, j])[:k] if np.isfinite(finite[i, j])}
        assert set(zip(edges.rows.tolist(), edges.columns.tolist())) == expected
        np.testing.assert_array_equal(edges.scores, score[edges.rows, edges.columns])
        np.testing.assert_array_equal(edges.live_rows, np.isfinite(score).any(axis=1))


def test_without_a_full_matching_on_the_graph_dummies_leave_the_fewest_costly_latents_unmatched():
    score = np.array([[0.90, 0.8, 0.8], [0.91, 0.1, 0.1], [0.92, 0.1, 0.1]])  # rows 1, 2 reach only column 0
    i, j, s = one_to_one(lambda rows: score[rows], 3, 3, dense_limit=1, candidates=1, unmatched="dummy")
    # with an unmatched row counted at -1: row 2 takes column 0 (0.92), row 0 column 1 (0.8), row 1 none
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 0)]
    np.testing.assert_allclose(s, score[i, j])
    with pytest.raises(UniversalityError, match="raise candidates"):
        one_to_one(lambda rows: score[rows], 3, 3, dense_limit=1, candidates=1)


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar: signs fixed by R's diagonal


def test_procrustes_recovers_shared_atoms_after_a_rotation_of_one_models_space():
    g = torch.Generator().manual_seed(9)
    q = _rotation(D_IN, 10)
    x_a = torch.randn(4000, D_IN, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, D_IN)  # anisotropic
    x_b = x_a @ q + 0.05 * torch.randn(x_a.shape, generator=g, dtype=torch.float64)  # b's space: a's, rotated
    x_a, x_b = x_a - x_a.mean(dim=0), x_b - x_b.mean(dim=0)
    cross = x_a.T @ x_b  # [d_a, d_b]
    r = procrustes_map(cross)
    torch.testing.assert_close(r, q, atol=0.02, rtol=0)
    torch.testing.assert_close(r @ r.T, torch.eye(D_IN, dtype=torch.float64))
    torch.testing.assert_close(procrustes_map(x_a.T @ x_a), torch.eye(D_IN, dtype=torch.float64))  # one model: I
    a, b, truth = _planted(11)
    b = b.double() @ q  # b's dictionary lives in b's rotated space
    direct, linear = match(a, b), match_linear(a, b, cross)
    assert direct["shared"].mean() < 0.05 and direct.attrs["level"] == "direct"
    assert min(_precision_recall(linear, truth)) >= 0.9 and linear.attrs["level"] == "linear"


def test_width_coverage_counts_each_side_against_the_other():
    g = torch.Generator().manual_seed(12)
    small = _unit(torch.randn(60, D_IN, generator=g))
    large = torch.cat([_noisy_rows(small, g), _unit(torch.randn(90, D_IN, generator=g))])[torch.randperm(150,
                                                                                                         generator=g)]
    assert width_coverage(small, large) == (1.0, 0.4)
    assert width_coverage(large, small) == (0.4, 1.0)
    assert width_coverage(small, large, 1.0) == (0.0, 0.0)


def test_pair_rows_hold_each_level_beside_its_nulls():
    a, b, truth = _planted(13)
    q = _rotation(D_IN, 14)
    g = torch.Generator().manual_seed(15)
    x_a = torch.randn(3000, D_IN, generator=g, dtype=torch.float64)
    x_a = x_a - x_a.mean(dim=0)

    def sae(decoder):
        zeros = torch.zeros(len(decoder))
        return SAE(decoder.float(), zeros, decoder.float(), torch.zeros(D_IN))
    rows = compare_sae_pair(sae(a), sae(b.double() @ q), name_a="x", name_b="y", cross_moment=x_a.T @ (x_a @ q))
    assert list(rows.columns) == PAIR_COLUMNS and rows["level"].tolist() == ["direct", "linear"]
    direct, linear = rows.iloc[0], rows.iloc[1]
    assert (direct["sae_a"], direct["sae_b"], direct["latents_a"], direct["latents_b"]) == ("x", "y", 250, 300)
    assert direct["encoders"] and direct["shared_fraction"] < 0.05
    assert linear["shared_fraction"] == pytest.approx((truth >= 0).mean(), abs=0.04)
    assert linear["mean_mcs"] > direct["mean_mcs"] + 0.2
    for row in (direct, linear):
        assert abs(row["null_mean_mcs"] - row["analytic_null_mcs"]) < NULL_TOLERANCE
        assert row["null_shared_fraction"] == 0
    assert linear["analytic_null_mcs"] == pytest.approx(random_mcs_expectation(D_IN, 300))
    summary = summarize_match(match(a, b), sae_a="x", sae_b="y")
    assert summary["shared"] == match(a, b)["shared"].sum() and np.isnan(summary["null_mean_mcs"])


def test_bad_input_is_one_line():
    a, b = torch.randn(5, 4), torch.randn(6, 4)
    nan = a.clone()
    nan[2, 1] = float("nan")
    calls = [(lambda: match(a, torch.randn(6, 3)), "decoder_a has d_in 4 but decoder_b has 3"),
             (lambda: match(torch.zeros(0, 4), b), r"decoder_a must be \[latents, d_in\] with both > 0"),
             (lambda: match(a, torch.randn(6)), r"decoder_b must be \[latents, d_in\]"),
             (lambda: match(nan, b), "decoder_a has NaN or infinite values \\(first in latent 2\\)"),
             (lambda: match(a, b, encoder_a=a), "give both encoder_a and encoder_b, or neither"),
             (lambda: match(a, b, encoder_a=a, encoder_b=a), r"encoder_b has shape \(5, 4\), expected \(6, 4\)"),
             (lambda: match(a, b, threshold=1.5), r"threshold must be a cosine in \[-1, 1\]"),
             (lambda: match(a, b, candidates=0), "candidates must be an integer >= 1"),
             (lambda: match("a", b), "decoder_a must be a tensor"),
             (lambda: width_coverage(a, torch.randn(3, 5)), "decoder_small has d_in 4 but decoder_large has 5"),
             (lambda: procrustes_map(torch.randn(4, 3)), r"cross_moment has shape \(4, 3\).*d_a == d_b"),
             (lambda: procrustes_map(torch.zeros(4, 4)), "cross_moment is all zeros"),
             (lambda: match_linear(a, torch.randn(6, 3), torch.eye(3)), "decoder_a has d_in 4 but cross_moment has 3"),
             (lambda: random_mcs_expectation(1, 10), "d_in must be an integer >= 2"),
             (lambda: random_decoder(0, 4), "latents must be an integer >= 1"),
             (lambda: summarize_match(match(a, b)[["latent"]], sae_a="x", sae_b="y"), "matches lacks column"),
             (lambda: compare_sae_pair(a, b), "sae_a must be an SAE")]
    for call, message in calls:
        with pytest.raises(UniversalityError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
