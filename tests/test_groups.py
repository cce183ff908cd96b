"""Invariants of finite groups, their character tables and irreducible representations."""

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from universality.cli import app
from universality.errors import UniversalityError
from universality.groups import (character_table, direct_product, frobenius_schur, irrep_labels, irrep_matrices,
                                 make_group, permutation_group, projector, real_irreps)

PHI = (1 + np.sqrt(5)) / 2  # golden ratio; (1 - sqrt5)/2 = 1 - PHI
W = np.exp(2j * np.pi / 3)  # cube root of unity

# Quaternion group {1, -1, i, -i, j, -j, k, -k} = points 0..7, acting on itself by left multiplication.
Q8_GENERATORS = [[2, 3, 1, 0, 6, 7, 5, 4],  # i
                 [4, 5, 7, 6, 1, 0, 2, 3]]  # j
# Frobenius group of order 20 on Z/5: x -> x + 1 and x -> 2x (complex characters, a 4-dim irrep).
F20_GENERATORS = [[1, 2, 3, 4, 0], [0, 2, 4, 1, 3]]

NAMED = ["C1", "C5", "C12", "D1", "D2", "D5", "D6", "S3", "S4", "S5", "A4", "A5", "C6xC2", "S3xC2", "C3xC3xC2"]


def _groups():
    return ([make_group(name) for name in NAMED]
            + [permutation_group(Q8_GENERATORS, name="Q8"), permutation_group(F20_GENERATORS, name="F20"),
               direct_product(make_group("D5"), make_group("C3"))])


GROUPS = {g.name: g for g in _groups()}


def _known(group, representatives, rows):
    """Known table as [irreps, classes of `group`], columns placed by the class of each representative label."""
    known = np.asarray(rows, dtype=complex)  # [irreps, representatives]
    columns = [group.class_of[group.elements.index(label)] for label in representatives]
    assert sorted(columns) == list(range(len(group.classes))), "representatives must hit every class once"
    placed = np.empty_like(known)
    placed[:, columns] = known
    return placed


def _same_rows(table, known, tol=1e-9):
    """Equal up to a permutation of rows."""
    if table.shape != known.shape:
        return False
    unmatched = list(range(len(known)))
    for row in table:
        hits = [j for j in unmatched if np.abs(known[j] - row).max() < tol]
        if not hits:
            return False
        unmatched.remove(hits[0])
    return True


@pytest.mark.parametrize("name, order, classes", [
    ("S4", 24, 5), ("S5", 120, 7), ("A4", 12, 4), ("A5", 60, 5), ("D5", 10, 4), ("D6", 12, 6), ("C5", 5, 5),
    ("C6xC2", 12, 12), ("D1", 2, 2), ("D2", 4, 4), ("Q8", 8, 5), ("F20", 20, 5), ("D5xC3", 30, 12)])
def test_order_and_class_count(name, order, classes):
    group = GROUPS[name]
    assert group.order == order and len(group.table) == order and len(group.elements) == order
    assert len(group.classes) == classes
    assert sorted(x for members in group.classes for x in members) == list(range(order))
    assert group.classes[0] == [group.identity]


@pytest.mark.parametrize("name", GROUPS)
def test_table_is_a_group_latin_square_and_associative(name):
    group = GROUPS[name]
    t, n = group.table, group.order
    every = np.arange(n)
    assert (np.sort(t, axis=1) == every).all() and (np.sort(t, axis=0) == every[:, None]).all()  # Latin square
    assert (t[t[:, :, None], every[None, None, :]] == t[every[:, None, None], t[None, :, :]]).all()  # (ab)c = a(bc)
    assert (t[group.identity] == every).all() and (t[every, group.inverse] == group.identity).all()
    conjugates = t[t[:, 5 % n], group.inverse]  # g x g^-1 for x = element 5
    assert (group.class_of[conjugates] == group.class_of[5 % n]).all()


def test_permutation_products_compose_right_to_left():
    group = make_group("S3")
    a, b = group.elements.index("(0 1)"), group.elements.index("(1 2)")
    assert group.elements[group.table[a, b]] == "(0 1 2)"  # (0 1) after (1 2): 0->0->1, 1->2->2, 2->1->0
    assert group.elements[group.table[b, a]] == "(0 2 1)"  # (1 2) after (0 1): 0->1->2, 2->2->1, 1->0->0


def test_s4_table():
    group = GROUPS["S4"]
    known = _known(group, ["()", "(0 1)", "(0 1)(2 3)", "(0 1 2)", "(0 1 2 3)"],
                   [[1, 1, 1, 1, 1], [1, -1, 1, 1, -1], [2, 0, 2, -1, 0], [3, 1, -1, 0, -1], [3, -1, -1, 0, 1]])
    assert _same_rows(character_table(group), known)
    assert irrep_labels(group) == ["(4)", "(1,1,1,1)", "(2,2)", "(3,1)", "(2,1,1)"]


def test_a4_table():
    group = GROUPS["A4"]
    known = _known(group, ["()", "(0 1)(2 3)", "(0 1 2)", "(0 2 1)"],
                   [[1, 1, 1, 1], [1, 1, W, W**2], [1, 1, W**2, W], [3, -1, 0, 0]])
    assert _same_rows(character_table(group), known)


def test_a5_table_has_golden_ratio_values():
    group = GROUPS["A5"]
    known = _known(group, ["()", "(0 1)(2 3)", "(0 1 2)", "(0 1 2 3 4)", "(0 2 4 1 3)"],
                   [[1, 1, 1, 1, 1], [3, -1, 0, PHI, 1 - PHI], [3, -1, 0, 1 - PHI, PHI],
                    [4, 0, 1, -1, -1], [5, 1, -1, 0, 0]])
    assert _same_rows(character_table(group), known)


def test_d5_table():
    group = GROUPS["D5"]
    c1, c2 = 2 * np.cos(2 * np.pi / 5), 2 * np.cos(4 * np.pi / 5)
    assert np.isclose(c1, PHI - 1) and np.isclose(c2, -PHI)
    known = _known(group, ["e", "r", "r^2", "s"], [[1, 1, 1, 1], [1, 1, 1, -1], [2, c1, c2, 0], [2, c2, c1, 0]])
    assert _same_rows(character_table(group), known)


def test_d6_table():
    group = GROUPS["D6"]
    known = _known(group, ["e", "r", "r^2", "r^3", "s", "s r"],
                   [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, -1, -1], [1, -1, 1, -1, 1, -1], [1, -1, 1, -1, -1, 1],
                    [2, 1, -1, -2, 0, 0], [2, -1, -1, 2, 0, 0]])
    assert _same_rows(character_table(group), known)


def test_c5_table_is_fourier_in_frequency_order():
    group = GROUPS["C5"]
    powers = [group.elements.index(label) for label in ["e", "g", "g^2", "g^3", "g^4"]]
    known = np.exp(2j * np.pi * np.outer(np.arange(5), np.arange(5)) / 5)  # [k, j]
    table = character_table(group)[:, group.class_of[powers]]
    assert np.abs(table - known).max() < 1e-9  # rows in frequency order, k=0 first
    assert irrep_labels(group) == ["k=0", "k=1", "k=2", "k=3", "k=4"]


def test_c6xc2_table_is_product_of_cyclic_characters():
    group = GROUPS["C6xC2"]
    powers = ["e", "g"] + [f"g^{j}" for j in range(2, 6)]
    labels = [f"({powers[j]}, {powers[l]})" for j in range(6) for l in range(2)]
    rows = [[np.exp(2j * np.pi * a * j / 6) * (-1) ** (b * l) for j in range(6) for l in range(2)]
            for a in range(6) for b in range(2)]
    assert _same_rows(character_table(group), _known(group, labels, rows))


def test_s5_dimensions_and_trivial_first():
    table = character_table(GROUPS["S5"])
    assert table[:, 0].real.tolist() == [1, 1, 4, 4, 5, 5, 6]
    assert (table[0] == 1).all()
    assert irrep_labels(GROUPS["S5"])[:3] == ["(5)", "(1,1,1,1,1)", "(4,1)"]


@pytest.mark.parametrize("name", GROUPS)
def test_orthogonality_relations_and_sum_of_squared_dimensions(name):
    group = GROUPS[name]
    table = character_table(group)  # [irreps, classes]
    sizes = np.array([len(members) for members in group.classes])
    assert table.shape == (len(group.classes),) * 2
    assert np.abs((table * sizes) @ table.conj().T - group.order * np.eye(len(table))).max() < 1e-9  # rows
    assert np.abs(table.conj().T @ table - np.diag(group.order / sizes)).max() < 1e-9  # columns
    assert np.isclose((table[:, 0].real ** 2).sum(), group.order)
    assert (table[0] == 1).all() and (np.diff(table[:, 0].real) >= 0).all()  # trivial first, by dimension


def test_murnaghan_nakayama_equals_dixon_schneider_on_s5():
    group = GROUPS["S5"]
    exact = character_table(group)
    numeric = character_table(group, method="dixon-schneider")
    stripped = replace(group, permutations=None)  # the same table, no longer recognisable as S5: numeric path
    assert irrep_labels(stripped)[0] == "chi0" and irrep_labels(group)[0] == "(5)"
    assert _same_rows(numeric, exact) and _same_rows(character_table(stripped), exact)
    assert np.array_equal(exact, exact.real.round())  # Murnaghan–Nakayama is exact integer arithmetic


def test_frobenius_schur_indicators():
    for name in ["S3", "S4", "S5", "D1", "D2", "D5", "D6"]:
        assert (frobenius_schur(GROUPS[name]) == 1).all(), name
    assert frobenius_schur(GROUPS["C5"]).tolist() == [1, 0, 0, 0, 0]
    assert sorted(frobenius_schur(GROUPS["Q8"]).tolist()) == [-1, 1, 1, 1, 1]
    assert sorted(frobenius_schur(GROUPS["A4"]).tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("name", ["S4", "C5", "C12", "D5", "A4", "Q8", "F20", "C6xC2"])
def test_real_irrep_projectors_are_orthogonal_and_resolve_identity(name):
    group = GROUPS[name]
    irreps = real_irreps(group)
    total = np.zeros((group.order, group.order))
    for irrep in irreps:
        p = projector(group, irrep)
        assert np.abs(p - p.T).max() < 1e-12 and np.abs(p @ p - p).max() < 1e-10
        e = {1: 1, 0: 2, -1: 4}[irrep.indicator]
        assert np.linalg.matrix_rank(p) == round(np.trace(p)) == irrep.dim ** 2 // e
        total += p
    assert np.abs(total - np.eye(group.order)).max() < 1e-10
    assert sum(len(irrep.rows) for irrep in irreps) == len(group.classes)


def test_real_irreps_merge_pairs_and_double_quaternionic():
    c5 = real_irreps(GROUPS["C5"])
    assert [(r.label, r.dim, r.indicator) for r in c5] == [("k=0", 1, 1), ("k=1+k=4", 2, 0), ("k=2+k=3", 2, 0)]
    assert np.allclose(c5[1].character, 2 * np.cos(2 * np.pi * np.arange(5) / 5)[GROUPS["C5"].class_of])
    quaternionic = [r for r in real_irreps(GROUPS["Q8"]) if r.indicator == -1]
    assert len(quaternionic) == 1 and quaternionic[0].dim == 4 and quaternionic[0].character[0] == 4


@pytest.mark.parametrize("name", ["S4", "D5", "A4", "Q8", "F20", "S3xC2"])
def test_irrep_matrices_are_homomorphisms_with_the_right_traces(name):
    group = GROUPS[name]
    table, indicators = character_table(group), frobenius_schur(group)
    for i in range(len(table)):
        rho = irrep_matrices(group, i)  # [n, d, d]
        d = round(table[i, 0].real)
        assert rho.shape == (group.order, d, d)
        products = np.einsum("aij,bjk->abik", rho, rho)  # rho(a) rho(b), [n, n, d, d]
        assert np.abs(products - rho[group.table]).max() < 1e-8
        assert np.abs(np.einsum("aii->a", rho) - table[i, group.class_of]).max() < 1e-8
        unitary = np.einsum("aji,ajk->aik", rho.conj(), rho)
        assert np.abs(unitary - np.eye(d)).max() < 1e-8
        if indicators[i] == 1:
            assert np.isrealobj(rho)  # real orthogonal


def test_irrep_matrices_by_label_use_young_form_for_s4():
    group = GROUPS["S4"]
    rho = irrep_matrices(group, "(3,1)")
    swap = group.elements.index("(0 1)")
    assert np.isrealobj(rho) and np.allclose(rho[swap], rho[swap].T)  # Young: transpositions symmetric
    assert np.isclose(np.trace(rho[swap]), 1)


@pytest.mark.parametrize("name, fragment", [("Q8x", "unknown group 'Q8x'"), ("Z9", "unknown group 'Z9'"),
                                            ("S0", "n must be >= 1"), ("S8", "40320 elements"),
                                            ("C6xS7", "30240 elements"), ("C99999999999999", "more than 10^12")])
def test_bad_names_raise_one_line_errors(name, fragment):
    with pytest.raises(UniversalityError) as error:
        make_group(name)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bad_generators_and_methods_raise_one_line_errors():
    for generators, fragment in [([[0, 0, 1]], "not a permutation"), ([[1, 0], [0, 2, 1]], "lengths"),
                                 ([list(range(1, 8)) + [0], [1, 0] + list(range(2, 8))], "5040")]:
        with pytest.raises(UniversalityError, match=fragment) as error:
            permutation_group(generators)
        assert "\n" not in str(error.value)
    with pytest.raises(UniversalityError, match="not a full symmetric group"):
        character_table(GROUPS["A4"], method="murnaghan-nakayama")
    with pytest.raises(UniversalityError, match="unknown method"):
        character_table(GROUPS["S4"], method="exact")
    with pytest.raises(UniversalityError, match="no irrep"):
        irrep_matrices(GROUPS["S4"], "(5)")


def test_cli_prints_character_table():
    result = CliRunner().invoke(app, ["groups", "characters", "S4"])
    assert result.exit_code == 0
    assert "(3,1)" in result.stdout and "size 8" in result.stdout and "(0 1 2 3)" in result.stdout


def test_cli_rejects_unknown_group_with_exit_2():
    result = CliRunner().invoke(app, ["groups", "characters", "Z9"])
    assert result.exit_code == 2
    assert "unknown group 'Z9'" in result.output
