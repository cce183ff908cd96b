"""Is the same circuit built in every seed? Head roles per seed, matched across seeds.

`circuits_table` gives one row per (seed, role, head) that holds the role, the rows of
`circuits.parquet`:

| column                         | type  |                                                              |
|--------------------------------|-------|--------------------------------------------------------------|
| seed                           | int   |                                                              |
| role                           | str   | one of `ROLES`                                               |
| layer, head                    | int   |                                                              |
| score                          | float | the role's defining score (`classify_heads`)                 |
| matched_head_in_other_seeds    | str   | "seed:layer.head" per other seed, ";"-joined: the head's one-to-one partner by attention-pattern correlation on the clean prompts (`neurons.match_heads`, Hungarian) |
| same_role_in_other_seeds       | int   | how many of those partners hold the same role                |
| other_seeds                    | int   | how many other seeds were compared                           |
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..errors import UniversalityError
from ..neurons import match_heads
from ..tasks import IOIPrompts
from ._roles import RoleThresholds, classify_heads, head_role_scores

__all__ = ["CIRCUIT_COLUMNS", "seed_roles", "circuits_table"]

CIRCUIT_COLUMNS = ["seed", "role", "layer", "head", "score", "matched_head_in_other_seeds",
                   "same_role_in_other_seeds", "other_seeds"]


def seed_roles(adapter, prompts: IOIPrompts, *, thresholds: RoleThresholds = RoleThresholds(),
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores per head, roles) of one model: `head_role_scores` and `classify_heads` of it."""
    scores = head_role_scores(adapter, prompts, thresholds=thresholds, seed=seed)
    return scores, classify_heads(scores, thresholds)


def circuits_table(adapters: Mapping[int, object], prompts: IOIPrompts, *,
                   thresholds: RoleThresholds = RoleThresholds(), seed: int = 0) -> pd.DataFrame:
    """The `circuits.parquet` rows (module docstring) of models {seed: adapter} on the same `prompts`.

    1. per seed: role scores and roles (`seed_roles`), and attention patterns on the clean prompts;
    2. per ordered pair of seeds: the one-to-one head matching of `match_heads`;
    3. per (seed, role, head): its partner in every other seed, and whether that partner holds the role.
    """
    if len(adapters) < 1:
        raise UniversalityError("circuits_table needs at least one model: pass {seed: adapter}")
    roles, patterns = {}, {}
    for model_seed, adapter in adapters.items():
        roles[model_seed] = seed_roles(adapter, prompts, thresholds=thresholds, seed=seed)[1]
        patterns[model_seed] = adapter.attention_patterns(prompts.clean)  # [layers, batch, heads, query, key]
    held = {s: set(zip(r["role"], r["layer"], r["head"])) for s, r in roles.items()}
    rows = []
    for model_seed, table in roles.items():
        others = [s for s in adapters if s != model_seed]
        partners = {}
        for other in others:
            match = match_heads(patterns[model_seed], patterns[other])
            partners[other] = {(int(a), int(b)): (int(c), int(d)) for a, b, c, d in
                               zip(match["layer"], match["head"], match["matched_layer"], match["matched_head"])}
        for role, layer, head, score in zip(table["role"], table["layer"], table["head"], table["score"]):
            matched = [(other, partners[other][(int(layer), int(head))]) for other in others]
            rows.append({"seed": int(model_seed), "role": role, "layer": int(layer), "head": int(head),
                         "score": float(score),
                         "matched_head_in_other_seeds": ";".join(f"{o}:{l}.{h}" for o, (l, h) in matched),
                         "same_role_in_other_seeds": sum((role, l, h) in held[o] for o, (l, h) in matched),
                         "other_seeds": len(others)})
    return pd.DataFrame(rows, columns=CIRCUIT_COLUMNS)
