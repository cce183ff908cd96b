"""Universality over training (`universality.dynamics`): planted emergence steps, persistence, CKA."""

import math

import pytest
import torch

from universality.dynamics import universality_over_training
from universality.errors import UniversalityError

STEPS = [0, 10, 100, 1000]
MODELS, UNITS, TOKENS = ("a", "b", "c"), 32, 2000
# planted: unit -> the steps at which it is shared by every model (universal), else independent noise
SHARED = {**{u: {10, 100, 1000} for u in range(4)}, **{u: {100, 1000} for u in range(4, 8)}, 8: {10, 1000}}


def planted(step: int, units: int = UNITS):
    """Batches of step `step`: shared latents for the units universal then, independent noise otherwise."""
    z = torch.randn(TOKENS, units, generator=torch.Generator().manual_seed(1))
    acts = {}
    for index, model in enumerate(MODELS):
        noise = torch.randn(TOKENS, units, generator=torch.Generator().manual_seed(100 * step + index + 7))
        shared = torch.tensor([step in SHARED.get(u, ()) for u in range(units)])
        acts[model] = torch.where(shared, z + 0.05 * noise, noise)
    return [{m: {"mlp": x[i:i + 500]} for m, x in acts.items()} for i in range(0, TOKENS, 500)]


@pytest.fixture(scope="module")
def result():
    return universality_over_training({step: planted(step) for step in STEPS}, threshold=0.3, rotations=2)


def test_first_crossing_step_is_the_planted_one(result):
    units = result.units.set_index(["model", "unit"])
    for model in MODELS:
        for unit in range(UNITS):
            expected = min(SHARED[unit]) if unit in SHARED else math.nan
            got = units.loc[(model, unit), "first_universal_step"]
            assert (math.isnan(expected) and math.isnan(got)) or got == expected, (model, unit)
            assert units.loc[(model, unit), "final_universal"] == (unit in SHARED)
            assert units.loc[(model, unit), "stays_universal"] == (unit in SHARED and unit != 8)


def test_persistence_is_the_planted_share(result):
    shares = result.persistence.groupby("step").share.unique()
    # of the 9 final universal units: none at 0, units 0-3 and 8 at 10, 0-7 at 100, all at 1000
    assert [list(shares[s]) for s in STEPS] == [[0.0], [5 / 9], [8 / 9], [1.0]]
    assert (result.persistence.final_universal == 9).all()


def test_percent_universal_per_step(result):
    percent = result.layers.groupby("step").pct_universal.unique()
    assert [list(percent[s]) for s in STEPS] == [[0.0], [500 / 32], [800 / 32], [900 / 32]]


def test_cka_of_identical_checkpoints_is_one():
    same = planted(10)
    result = universality_over_training({0: same, 5: same, 9: planted(0)}, threshold=0.3)
    first = result.cka.query("step == 0")
    assert first.query("relation == 'next'").other_step.eq(5).all()
    assert first.query("relation == 'next'").cka.tolist() == pytest.approx([1.0] * 3)
    assert (first.query("relation == 'final'").cka < 0.5).all()  # 5 shared units of 32 against noise
    assert set(result.cka.step) == {0, 5}  # the final step has no later checkpoint


def test_different_architectures_between_checkpoints_is_one_line():
    with pytest.raises(UniversalityError, match="checkpoint step 0 has unit sets .*different architectures"):
        universality_over_training({0: planted(0, units=16), 10: planted(10)})


def test_one_shot_iterator_and_single_step_are_one_line():
    with pytest.raises(UniversalityError, match="pass a list or a callable"):
        universality_over_training({0: iter(planted(0)), 10: planted(10)})
    with pytest.raises(UniversalityError, match="at least 2 checkpoint steps"):
        universality_over_training({0: planted(0)})


def test_misaligned_tokens_between_checkpoints_is_one_line():
    short = [{m: {"mlp": s["mlp"][:100]} for m, s in batch.items()} for batch in planted(10)]
    with pytest.raises(UniversalityError, match="different token counts"):
        universality_over_training({0: planted(0), 10: short})
