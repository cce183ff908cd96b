"""Subspace universality: `principal_angles` from the state against scipy's subspace angles on the principal
component scores, its invariances and a planted shared latent; `irrep_similarity` against an explicit
float64 projector over the pairs, planted seeds built from irreps' rho(ab) blocks, and why the layers (not
their projections alone) are compared."""

import numpy as np
import pytest
import scipy.linalg
import torch

from universality import UniversalityError
from universality.groups import make_group
from universality.irreps import irrep_similarity
from universality.irreps._bases import irrep_bases
from universality.irreps._loss import restricted_hidden
from universality.similarity import cca, principal_angles, svcca


def _sums(x, y):
    """(G_a, G_b, C, tokens): the centred co-moment sums the state holds."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return xc.T @ xc, yc.T @ yc, xc.T @ yc, len(x)


def _latent_pair(tokens=4000, widths=(10, 8), shared=3, strength=10.0, seed=0):
    """Two unit sets carrying the same `shared`-dim latent (std `strength`), randomly mixed into their units,
    plus private unit-variance noise: float64 [tokens, n_a], [tokens, n_b]."""
    g = torch.Generator().manual_seed(seed)
    z = strength * torch.randn(tokens, shared, generator=g, dtype=torch.float64)
    sides = []
    for width in widths:
        mix = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))[0][:shared]  # [shared, n]
        sides.append(z @ mix + torch.randn(tokens, width, generator=g, dtype=torch.float64) + 50.0)
    return sides


def _kept_reference(x, variance):
    """Fewest top principal directions of x's centred rows holding `variance` of its variance."""
    values = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1]
    return int(np.searchsorted(np.cumsum(values) / values.sum(), variance) + 1)


def ref_principal_cosines(x, y, ka, kb):
    """Textbook: PCA of each centred side in float64, then scipy's principal angles between the columns of
    the top ka and kb principal component scores; cosines, descending."""
    def scores(m, k):
        m = m.numpy() - m.numpy().mean(0)
        _, vectors = np.linalg.eigh(m.T @ m)
        return m @ vectors[:, ::-1][:, :k]
    return np.sort(np.cos(scipy.linalg.subspace_angles(scores(x, ka), scores(y, kb))))[::-1]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_principal_angles_equal_scipy_subspace_angles_of_the_pc_scores(k):
    x, y = _latent_pair(strength=2.0)
    found = principal_angles(*_sums(x, y), k=k)
    assert found.dtype == torch.float64 and len(found) == k
    np.testing.assert_allclose(found.numpy(), ref_principal_cosines(x, y, k, k), atol=1e-9)
    assert (found[:-1] >= found[1:]).all() and (found >= 0).all() and (found <= 1).all()


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99])
def test_principal_angles_keep_each_sides_directions_by_variance(variance):
    x, y = _latent_pair(strength=1.5, widths=(12, 5))
    ka, kb = _kept_reference(x, variance), _kept_reference(y, variance)
    found = principal_angles(*_sums(x, y), variance=variance)
    assert len(found) == min(ka, kb)
    np.testing.assert_allclose(found.numpy(), ref_principal_cosines(x, y, ka, kb), atol=1e-9)


def test_svcca_is_the_mean_principal_cosine_at_99_percent_of_the_variance():
    x, y = _latent_pair(strength=1.5)
    sums = _sums(x, y)
    assert svcca(*sums) == pytest.approx(float(principal_angles(*sums, variance=0.99).mean()), abs=1e-12)


def test_principal_angles_are_unchanged_by_rotating_or_scaling_either_side():
    x, y = _latent_pair(strength=2.0)
    g = torch.Generator().manual_seed(5)
    qa = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    qb = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    for k in (None, 4):
        before = principal_angles(*_sums(x, y), k=k)
        after = principal_angles(*_sums(3.0 * x @ qa, y @ qb), k=k)
        torch.testing.assert_close(after, before, atol=1e-10, rtol=0)


def test_a_planted_shared_latent_gives_three_cosines_near_1_and_the_rest_small():
    x, y = _latent_pair(shared=3, strength=10.0)
    found = principal_angles(*_sums(x, y), k=6)
    # latent variance 100 against private noise 1 per direction: shared cosines 100 / 101
    assert (found[:3] - 100 / 101).abs().max() < 0.005 and (found[3:] < 0.1).all(), found
    # the latent holds 300 of each side's ~310 variance: 0.9 of it keeps just its 3 directions
    assert len(principal_angles(*_sums(x, y))) == 3
    other = _latent_pair(seed=1)[1]  # a different latent: nothing shared
    assert (principal_angles(*_sums(x, other), k=3) < 0.1).all()


def test_k_beyond_a_rank_deficient_side_is_one_line_and_variance_stops_at_the_rank():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.randn(500, 6, generator=g, dtype=torch.float64)
    assert len(principal_angles(*_sums(x, y), k=3)) == 3
    assert len(principal_angles(*_sums(x, y), variance=1.0)) == 3
    with pytest.raises(UniversalityError, match=r"k=4 exceeds the rank of unit set a \(3 directions"):
        principal_angles(*_sums(x, y), k=4)


@pytest.mark.parametrize("settings, message", [
    (dict(k=0), "k must be an integer >= 1"), (dict(k=True), "k must be an integer >= 1"),
    (dict(k=2.0), "k must be an integer >= 1"), (dict(variance=0.0), r"variance must be a fraction in \(0, 1\]"),
    (dict(variance=1.5), "variance must be a fraction"), (dict(variance="0.9"), "variance must be a fraction"),
])
def test_bad_principal_angle_settings_are_one_line(settings, message):
    x, y = _latent_pair()
    with pytest.raises(UniversalityError, match=message) as error:
        principal_angles(*_sums(x, y), **settings)
    assert "\n" not in str(error.value)


def test_a_dead_side_spans_no_subspace_and_bad_sums_are_one_line():
    x, y = _latent_pair()
    with pytest.raises(UniversalityError, match="unit set b has no variance"):
        principal_angles(*_sums(x, torch.ones_like(y)))
    gram_a, gram_b, cross, tokens = _sums(x, y)
    with pytest.raises(UniversalityError, match="tokens must be an integer"):
        principal_angles(gram_a, gram_b, cross, 0)
    with pytest.raises(UniversalityError, match="cross"):
        principal_angles(gram_a, gram_b, cross.T, tokens)


# --- irrep subspaces shared by seeds of a group-composition model ---------------------------------

S4 = make_group("S4")


def _block(group, label):
    """Irrep `label`'s rho(ab) block as unit-variance functions of the pair, float64 [pairs, r]."""
    basis = {irrep.label: q for irrep, q in irrep_bases(group)}[label]
    return np.sqrt(group.order) * basis[group.table.ravel()]


def _planted_seed(labels, noise_units, seed):
    """A hidden layer [pairs, units]: the rho(ab) blocks of `labels` and `noise_units` of private noise per
    pair, randomly rotated together (a random orthogonal mix of the units)."""
    rng = np.random.default_rng(seed)
    parts = [_block(S4, label) for label in labels] + [rng.standard_normal((S4.order ** 2, noise_units))]
    layer = np.hstack(parts)
    rotation = np.linalg.qr(rng.standard_normal((layer.shape[1], layer.shape[1])))[0]
    return layer @ rotation + 3.0


def test_seeds_mixing_the_same_blocks_share_them_and_nothing_else():
    table = irrep_similarity(S4, {"a": _planted_seed(["(3,1)"], 0, 1), "b": _planted_seed(["(3,1)"], 0, 2)})
    assert table.columns.tolist() == ["seed_a", "seed_b", "irrep", "dim", "mean_canonical_corr", "cka"]
    by_irrep = table.set_index("irrep")
    assert set(by_irrep.index) == {"(1,1,1,1)", "(2,2)", "(3,1)", "(2,1,1)"}  # every non-trivial irrep
    assert by_irrep.loc["(3,1)", "mean_canonical_corr"] == pytest.approx(1.0, abs=1e-3)  # the ridge's shrinkage
    assert by_irrep.loc["(3,1)", "cka"] == pytest.approx(1.0, abs=1e-12)
    assert by_irrep.drop("(3,1)")[["mean_canonical_corr", "cka"]].abs().max().max() < 1e-12


def test_with_private_noise_shared_blocks_read_near_1_and_unused_or_one_sided_ones_low():
    seeds = {"a": _planted_seed(["(3,1)", "(2,2)"], 16, 3), "b": _planted_seed(["(3,1)"], 16, 4)}
    corr = irrep_similarity(S4, seeds).set_index("irrep").mean_canonical_corr
    assert corr["(3,1)"] > 0.95, corr
    assert corr["(2,2)"] < 0.3 and corr["(2,1,1)"] < 0.3 and corr["(1,1,1,1)"] < 0.3, corr  # one-sided, unused


def test_projections_alone_would_call_noise_shared_the_layers_do_not():
    """Why both layers stay whole: two independent noise layers' (2,1,1) projections both span its 9-dim
    block, so their own canonical correlations are all 1."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((576, 20)), rng.standard_normal((576, 20))
    px, py = (torch.from_numpy(restricted_hidden(S4, h, ["(2,1,1)"])) for h in (x, y))
    assert cca(*_sums(px, py), ridge=0.0) == pytest.approx(1.0, abs=1e-6)
    corr = irrep_similarity(S4, {"x": x, "y": y}).set_index("irrep").mean_canonical_corr
    assert corr["(2,1,1)"] < 0.2, corr


def _toy_hidden(group, units, seed):
    """ReLU(E_L[a] + E_R[b]) of random embeddings: a hidden layer [pairs, units] with every irrep in it."""
    rng = np.random.default_rng(seed)
    left, right = rng.standard_normal((group.order, units)), rng.standard_normal((group.order, units))
    return np.maximum(left[:, None, :] + right[None, :, :], 0).reshape(group.order ** 2, units)


@pytest.mark.parametrize("group_name", ["S3", "S4", "D5", "C5"])  # C5: complex pairs, r = dim^2 / 2
def test_irrep_similarity_equals_a_direct_float64_projector_over_the_pairs(group_name):
    group = make_group(group_name)
    xa, xb = _toy_hidden(group, 10, 0), _toy_hidden(group, 7, 1)
    table = irrep_similarity(group, {"a": xa, "b": xb}, ridge=0.0).set_index("irrep")
    ca, cb = xa - xa.mean(0), xb - xb.mean(0)
    ua, ub = np.linalg.svd(ca, full_matrices=False)[0], np.linalg.svd(cb, full_matrices=False)[0]  # spans over pairs
    for irrep, basis in irrep_bases(group):
        if irrep.label not in table.index:
            continue
        onto = basis[group.table.ravel()] / np.sqrt(group.order)  # [pairs, r], orthonormal over the pairs
        projector = onto @ onto.T  # [pairs, pairs]: onto the functions of a b in irrep's block
        np.testing.assert_allclose(projector @ ca, restricted_hidden(group, xa, [irrep.label]), atol=1e-9)
        cosines = np.linalg.svd(ua.T @ projector @ ub, compute_uv=False)[:basis.shape[1]]
        cka = np.linalg.norm(ca.T @ projector @ cb) ** 2 / (np.linalg.norm(ca.T @ ca) * np.linalg.norm(cb.T @ cb))
        assert table.loc[irrep.label, "mean_canonical_corr"] == pytest.approx(cosines.mean(), abs=1e-9)
        assert table.loc[irrep.label, "cka"] == pytest.approx(cka, abs=1e-12)
        assert table.loc[irrep.label, "dim"] == irrep.dim


def test_irrep_similarity_is_unchanged_by_rotating_a_seeds_units_and_reads_seeds_once():
    xa, xb, xc = (_toy_hidden(S4, 12, s) for s in range(3))
    rotation = np.linalg.qr(np.random.default_rng(9).standard_normal((12, 12)))[0]
    before = irrep_similarity(S4, {"a": xa, "b": xb, "c": xc})
    after = irrep_similarity(S4, ((name, h) for name, h in [("a", xa @ rotation), ("b", xb), ("c", xc)]))
    assert list(zip(before.seed_a, before.seed_b))[::4] == [("a", "b"), ("a", "c"), ("b", "c")]
    np.testing.assert_allclose(after[["mean_canonical_corr", "cka"]], before[["mean_canonical_corr", "cka"]],
                               atol=1e-9)


def test_a_dead_layer_scores_nan_and_bad_input_is_one_line():
    table = irrep_similarity(S4, {"a": _toy_hidden(S4, 6, 0), "dead": np.full((576, 6), 2.0)})
    assert table[["mean_canonical_corr", "cka"]].isna().all().all()
    for hidden, message in [({"a": _toy_hidden(S4, 6, 0)}, "at least 2 seeds"),
                            ({"a": np.zeros((100, 6)), "b": np.zeros((100, 6))}, "576"),
                            ({"a": _toy_hidden(S4, 6, 0), "b": np.full((576, 6), np.nan)}, "hidden of 'b'")]:
        with pytest.raises(UniversalityError, match=message) as error:
            irrep_similarity(S4, hidden)
        assert "\n" not in str(error.value)
    with pytest.raises(UniversalityError, match="ridge must be"):
        irrep_similarity(S4, {"a": _toy_hidden(S4, 6, 0), "b": _toy_hidden(S4, 6, 1)}, ridge=-1)
