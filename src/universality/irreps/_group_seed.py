"""One trained group-composition seed, analysed: the per-seed tables of a group experiment.

`analyze_group_seed` runs the model on all pairs once and derives, for each real irrep, its logit
similarity (key or not), the FVE of every element-indexed weight matrix and of the hidden layer's
rho(a), rho(b), rho(ab) terms; the seed's losses (full, restricted, excluded); each hidden unit's
irrep and best coset partition; the order in which irreps emerge over the checkpoints; and for
cyclic groups the Fourier key frequencies of the embeddings.

| table       | one row per                    | columns                                                    |
|-------------|--------------------------------|------------------------------------------------------------|
| `irreps`    | irrep                          | irrep, dim, similarity, key, fve_<matrix>..., hidden_a/b/ab |
| `units`     | hidden unit                    | unit, irrep, share, dead, coset_subgroup, coset_of, coset_side, coset_constancy |
| `emergence` | irrep                          | irrep, dim, epoch, order, final_similarity                 |
| `fourier`   | (matrix, frequency), C_n only  | matrix, frequency, norm, fve, key                          |
| `summary`   | (a dict)                       | accuracies, losses (full, restricted, excluded), key irreps, fraction of logits explained |
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..collect import capture
from ..errors import UniversalityError
from ..tasks import GroupTask
from ._cosets import coset_constancy, subgroups_of_interest
from ._emergence import EMERGENCE_THRESHOLD, irrep_emergence
from ._fourier import fourier_key_frequencies
from ._irreps import fraction_logits_explained, fraction_variance_explained, hidden_fve, logit_similarity
from ._loss import excluded_hidden, model_loss, restricted_hidden
from ._units import unit_irreps

__all__ = ["analyze_group_seed", "element_matrices", "run_on_pairs"]

_MAX_COSET_ORDER = 720  # coset scores of every subgroup of interest stay cheap up to S6


@torch.no_grad()
def run_on_pairs(model: nn.Module, task: GroupTask, unit_set: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits [pairs, order] and the unit set's activations [pairs, units] on every pair, float64."""
    model.eval()
    with capture(model, [unit_set]) as cache:
        logits = model(task.left, task.right)
    return logits.double().numpy(), cache[unit_set].double().numpy()


@torch.no_grad()
def _logits_with(model: nn.Module, task: GroupTask, unit_set: str, hidden: np.ndarray) -> np.ndarray:
    """Logits [pairs, order] with the unit set's output replaced by `hidden` [pairs, units]."""
    replacement = torch.as_tensor(hidden, dtype=torch.float32)
    handle = dict(model.named_modules())[unit_set].register_forward_hook(lambda module, inputs, output: replacement)
    try:
        return model(task.left, task.right).double().numpy()
    finally:
        handle.remove()


def element_matrices(model: nn.Module, *, fve_matrices: Literal["paper", "raw"] = "paper") -> dict[str, np.ndarray]:
    """The weight matrices whose rows are indexed by group element, float64 [order, width] each:
    the embeddings (left and right for the MLP, the shared token embedding for the transformer) and
    the unembedding.

    fve_matrices : {'paper', 'raw'}, default='paper'
        'paper': as the hidden layer sees them, as the authors' `get_embeds` / `get_unembed`
        (utils/metrics.py): the MLP's E_L W_L^T and E_R W_R^T [order, hidden] (`hidden_tables`) and U
        [order, hidden]; the transformer's W_E [order, d_model] and U W_out [order, d_mlp] (the
        unembedding read from the MLP's neurons);
        'raw': the parameters as stored: E_L, E_R [order, embed_dim] or W_E, and U [order, hidden or d_model].
    """
    if fve_matrices not in ("paper", "raw"):
        raise UniversalityError(f"fve_matrices must be 'paper' or 'raw', not {fve_matrices!r}")
    def f64(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().double().numpy()

    order, paper = model.order, fve_matrices == "paper"
    unembed = f64(model.unembed.weight)  # [order, hidden or d_model]
    if hasattr(model, "embed_left"):
        left, right = f64(model.embed_left), f64(model.embed_right)  # [order, embed_dim]
        if paper:  # W = [W_L | W_R] [hidden, 2 embed_dim]: T_L = E_L W_L^T [order, hidden]
            w_left, w_right = np.split(f64(model.linear.weight), 2, axis=1)
            left, right = left @ w_left.T, right @ w_right.T
        return {"embed_left": left, "embed_right": right, "unembed": unembed}
    if paper:  # [order, d_model] @ W_out [d_model, d_mlp]
        unembed = unembed @ f64(model.blocks[0].mlp.fc_out.weight)
    return {"embed": f64(model.embed.weight[:order]), "unembed": unembed}  # the "=" token's row is no element


def analyze_group_seed(task: GroupTask, model: nn.Module, *, unit_set: str, key_threshold: float,
                       unit_threshold: float, checkpoint_models: dict[int, nn.Module] | None = None,
                       fve_matrices: Literal["paper", "raw"] = "paper",
                       restricted_hidden_mean: Literal["dropped", "kept"] = "dropped",
                       emergence_rule: Literal["first_crossing", "stays_above"] = "first_crossing",
                       emergence_threshold: float = EMERGENCE_THRESHOLD,
                       loss_readout: Literal["direct", "forward"] = "direct") -> dict[str, pd.DataFrame | dict]:
    """Every per-seed table (module docstring) for `model` trained on the composition `task`.

    The keywords after `unit_set` are `GroupAnalysisConfig`'s fields, by the same names (pass
    `**config.analysis.model_dump()`): `fve_matrices` as `element_matrices`, `restricted_hidden_mean` as
    `restricted_hidden`'s `hidden_mean`, `emergence_rule` and `emergence_threshold` as `irrep_emergence`'s
    `rule` and `threshold` (with `key_threshold`). `loss_readout` says how the restricted and excluded
    hidden layers become logits: "direct" (the paper's `hidden_to_logits`): hidden @ the unembedding read
    from the neurons (`element_matrices`' paper "unembed": U for the MLP, U W_out for the transformer,
    whose residual stream, attention output and MLP output bias are left out); "forward": patched into
    the model's forward pass in place of `unit_set` (this package before issue 8). The two agree for the
    MLP; "direct" needs `unit_set` to be the MLP's hook_post."""
    if loss_readout not in ("direct", "forward"):
        raise UniversalityError(f"loss_readout must be 'direct' (the paper) or 'forward', not {loss_readout!r}")
    if loss_readout == "direct" and not unit_set.endswith("mlp.hook_post"):
        raise UniversalityError(f"loss_readout 'direct' reads logits from the MLP's hook_post, not {unit_set!r}; "
                                "pass that unit set or loss_readout='forward'")
    group = task.group
    target, train = task.target.numpy(), task.train.numpy()
    # 1) one pass over all pairs
    logits, hidden = run_on_pairs(model, task, unit_set)
    # 2) per irrep: logit similarity, FVE of the element-indexed matrices and of the hidden layer's terms
    irreps = logit_similarity(group, logits, threshold=key_threshold)
    matrices = element_matrices(model, fve_matrices=fve_matrices)
    for name, matrix in matrices.items():
        irreps[f"fve_{name}"] = fraction_variance_explained(group, matrix).fve.to_numpy()
    terms = hidden_fve(group, hidden)
    for term in ("a", "b", "ab"):
        shares = terms[terms.term == term].set_index("irrep").fve
        irreps[f"hidden_{term}"] = irreps.irrep.map(shares).fillna(0.0).to_numpy()
    key = irreps.irrep[irreps.key].tolist()
    # 3) losses: the full model; restricted to / excluding the key irreps' rho(ab) part, read out by
    #    `loss_readout`: directly (hidden @ readout [units, order]) or patched into the forward pass
    predicted = logits.argmax(axis=1) == target
    summary = {
        "train_acc": float(predicted[train].mean()), "test_acc": float(predicted[~train].mean()),
        "loss": model_loss(logits, target), "train_loss": model_loss(logits, target, train),
        "key_irreps": " ".join(key), "n_key_irreps": len(key),
        "fraction_logits_explained": fraction_logits_explained(irreps),
        "restricted_loss": np.nan, "excluded_loss": np.nan,
    }
    if key:
        readout = element_matrices(model)["unembed"].T  # [units, order]

        def logits_of(replaced: np.ndarray) -> np.ndarray:
            return replaced @ readout if loss_readout == "direct" else _logits_with(model, task, unit_set, replaced)

        restricted = logits_of(restricted_hidden(group, hidden, key, hidden_mean=restricted_hidden_mean))
        summary["restricted_loss"] = model_loss(restricted, target)
        summary["excluded_loss"] = model_loss(logits_of(excluded_hidden(group, hidden, key)), target, train)
    # 4) per unit: irrep and the subgroup coset partition that explains most of its variance
    units = unit_irreps(group, hidden, threshold=unit_threshold)
    if group.order <= _MAX_COSET_ORDER:
        units = units.join(_best_cosets(group, hidden), on="unit")
    # 5) emergence over checkpoints; 6) Fourier frequencies for cyclic groups
    emergence = irrep_emergence(group, [(epoch, run_on_pairs(m, task, unit_set)[0])
                                        for epoch, m in sorted((checkpoint_models or {}).items())],
                                threshold=emergence_threshold, rule=emergence_rule,
                                key_threshold=key_threshold) if checkpoint_models else pd.DataFrame()
    fourier = pd.DataFrame()
    if group.name.startswith("C") and group.name[1:].isdigit():
        fourier = pd.concat([fourier_key_frequencies(m, group.order).assign(matrix=name)
                             for name, m in matrices.items()], ignore_index=True)
    return {"irreps": irreps, "units": units, "emergence": emergence, "fourier": fourier,
            "summary": summary}


def _best_cosets(group, hidden: np.ndarray) -> pd.DataFrame:
    """Per unit: the (subgroup, of, side) coset partition with the highest constancy, [units] rows."""
    frames = [coset_constancy(group, hidden, members).assign(coset_subgroup=name)
              for name, members in subgroups_of_interest(group).items()]
    if not frames:
        return pd.DataFrame(columns=["coset_subgroup", "coset_of", "coset_side", "coset_constancy"])
    scores = pd.concat(frames, ignore_index=True).dropna(subset=["constancy"])
    best = scores.loc[scores.groupby("unit").constancy.idxmax()].set_index("unit")
    return best.rename(columns={"of": "coset_of", "side": "coset_side", "constancy": "coset_constancy"})[
        ["coset_subgroup", "coset_of", "coset_side", "coset_constancy"]]
