"""Head roles and patching on `circuits.ioi_reference_model`, a transformer built to hold Wang et al.'s IOI circuit:
0.0 duplicate token, 1.1 S-inhibition, 2.0 name mover (2.1 a negative name mover in a variant), the rest
distractors. Each score is checked against the value the construction gives it."""

from __future__ import annotations

import pytest
import torch

from universality.circuits import (
    IOI_REFERENCE_HEADS, activation_patching, attribution_patching, classify_heads, head_role_scores,
    ioi_reference_model, permute_heads,
)
from universality.circuits._patching import run_components, top_components, z_site
from universality.circuits._reference import LOGIT_SCALE, NEGATIVE_GAIN
from universality.config import IOIConfig, LanguageConfig
from universality.errors import UniversalityError
from universality.models import TinyAdapter
from universality.tasks import IOITask, SyntheticLanguage, ioi_metrics, logit_difference

torch.set_num_threads(1)

LANGUAGE = LanguageConfig(seq_len=12, n_classes=2, tokens_per_class=3, n_bracket_types=0, position_period=12,
                          repeat_len=2)
TASK = IOITask(SyntheticLanguage(LANGUAGE), IOIConfig(template_len=8))  # names 1, 2, 3; words 4, 5, 6
CIRCUIT = {(role, *IOI_REFERENCE_HEADS[role]) for role in ("duplicate_token", "s_inhibition", "name_mover")}
NEGATIVE = CIRCUIT | {("negative_name_mover", *IOI_REFERENCE_HEADS["negative_name_mover"])}


def _adapter(model) -> TinyAdapter:
    return TinyAdapter(model, bos_token_id=TASK.language.bos)


def _roles(adapter, prompts) -> set[tuple[str, int, int]]:
    roles = classify_heads(head_role_scores(adapter, prompts))
    return set(zip(roles["role"], roles["layer"], roles["head"]))


@pytest.fixture(scope="module")
def prompts():
    return TASK.prompts(64, seed=0)


@pytest.fixture(scope="module")
def reference():
    return _adapter(ioi_reference_model(TASK))


@pytest.fixture(scope="module")
def negative():
    return _adapter(ioi_reference_model(TASK, negative_name_mover=True))


def test_reference_model_solves_ioi_by_the_circuit(reference, negative, prompts):
    metrics = ioi_metrics(reference, prompts)
    assert metrics["accuracy"] == 1.0 and metrics["name_accuracy"] == 1.0
    # the name mover writes one unit of IO into OUT: logit LOGIT_SCALE for IO, 0 for S
    assert metrics["logit_diff"] == pytest.approx(LOGIT_SCALE, rel=1e-3)
    assert metrics["logit_diff_corrupt"] == pytest.approx(-LOGIT_SCALE, rel=1e-3)
    hedged = ioi_metrics(negative, prompts)  # the negative name mover takes back half
    assert hedged["accuracy"] == 1.0
    assert hedged["logit_diff"] == pytest.approx((1 - NEGATIVE_GAIN) * LOGIT_SCALE, rel=1e-3)


def test_each_reference_head_gets_its_role_and_the_distractors_none(reference, prompts):
    scores = head_role_scores(reference, prompts).set_index(["layer", "head"])
    roles = classify_heads(scores.reset_index())
    assert set(zip(roles["role"], roles["layer"], roles["head"])) == CIRCUIT
    mover, inhibitor = IOI_REFERENCE_HEADS["name_mover"], IOI_REFERENCE_HEADS["s_inhibition"]
    assert scores.loc[mover, "attn_io"] > 0.999 and scores.loc[mover, "copy"] == 1.0
    assert scores.loc[inhibitor, "attn_s2"] > 0.999
    # patched in, the S-inhibition head's corrupted output (inhibit IO) turns the name mover from IO (difference
    # IO - S = 1) to S1 and S2 (difference -1): a drop of twice the clean difference
    assert scores.loc[inhibitor, "s_inhibition"] == pytest.approx(2.0, abs=1e-3)
    others = scores["s_inhibition"].drop(inhibitor).dropna()
    assert len(others) == 3 and others.abs().max() < 1e-3  # the other heads before the name mover: no effect
    assert scores.loc[[(2, 0), (2, 1)], "s_inhibition"].isna().all()  # no name mover after layer 2


def test_negative_name_mover_writes_minus_the_name_and_is_classified_as_such(negative, prompts):
    scores = head_role_scores(negative, prompts).set_index(["layer", "head"])
    assert _roles(negative, prompts) == NEGATIVE
    head = IOI_REFERENCE_HEADS["negative_name_mover"]
    assert scores.loc[head, "attn_io"] > 0.999
    assert scores.loc[head, "negative_copy"] == 1.0 and scores.loc[head, "copy"] == 0.0
    # only name movers receive the path patch: the S-inhibition score does not move
    assert scores.loc[IOI_REFERENCE_HEADS["s_inhibition"], "s_inhibition"] == pytest.approx(2.0, abs=1e-3)


def test_permuting_heads_moves_their_roles_and_keeps_the_function(negative, prompts):
    swapped = permute_heads(negative.model, [1, 0], layers=[1])
    assert torch.allclose(swapped(prompts.clean), negative.model(prompts.clean), atol=1e-5)
    assert _roles(_adapter(swapped), prompts) == (NEGATIVE - {("s_inhibition", 1, 1)}) | {("s_inhibition", 1, 0)}
    every = _adapter(permute_heads(negative.model, [1, 0]))
    assert _roles(every, prompts) == {(role, layer, 1 - head) for role, layer, head in NEGATIVE}
    with pytest.raises(UniversalityError, match="permutation of 0..1"):
        permute_heads(negative.model, [0, 0])


def _logit_difference(prompts):
    return lambda logits: logit_difference(logits, prompts)


def test_patching_the_s_inhibition_head_lowers_the_logit_difference(reference, prompts):
    metric = _logit_difference(prompts)
    effect = activation_patching(reference, prompts.clean, prompts.corrupt, metric).set_index(["layer", "head"])
    # corrupted, each circuit head makes the name mover copy S: the difference goes from +LOGIT_SCALE to -LOGIT_SCALE
    for role in ("duplicate_token", "s_inhibition", "name_mover"):
        assert effect.loc[IOI_REFERENCE_HEADS[role], "effect"] == pytest.approx(-2 * LOGIT_SCALE, rel=1e-3)
    assert effect.loc[[(0, 1), (1, 0), (2, 1)], "effect"].abs().max() < 1e-3  # distractors and MLPs
    assert effect[effect["component"] == "mlp"]["effect"].abs().max() < 1e-3
    # mean ablation: the head's z averaged over prompts inhibits each of the three names by about 1/3, so IO and S
    # score alike for the name mover, and S, there twice, takes most of its attention
    layer, head = IOI_REFERENCE_HEADS["s_inhibition"]
    cut = slice(head * reference.d_head, (head + 1) * reference.d_head)
    _, clean = run_components(reference, prompts.clean, [z_site(layer)])
    mean = clean[z_site(layer)][..., cut].mean(dim=0)  # [pos, d_head]

    def ablate(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[..., cut] = mean
        return z
    ablated, _ = run_components(reference, prompts.clean, [], replace={z_site(layer): ablate})
    assert float(metric(ablated).mean()) < 0


def test_attribution_patching_ranks_the_circuit_above_the_distractors(prompts):
    """With soft attention (sharpness 3) gradients flow through every softmax of the circuit."""
    soft = _adapter(ioi_reference_model(TASK, sharpness=3.0))
    attribution = attribution_patching(soft, prompts.clean, prompts.corrupt, _logit_difference(prompts))
    circuit = {("head", layer, head) for _, layer, head in CIRCUIT}
    assert set(top_components(attribution, "attribution", 3)) == circuit
    rows = attribution.set_index(["layer", "head"])
    assert (rows.loc[[(l, h) for _, l, h in circuit], "attribution"] < -1).all()
    assert rows.loc[[(0, 1), (1, 0), (2, 1)], "attribution"].abs().max() < 1e-3
