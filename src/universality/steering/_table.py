"""The rows of `steering.parquet`: every steering method on every seed, and learned ones across seeds.

| column                   | meaning                                                                   |
|--------------------------|---------------------------------------------------------------------------|
| seed                     | the seed steered (its states, readout and ground truth)                   |
| method                   | ground_truth, mean_difference, steering_vector, affine, nonlinear         |
| success_rate             | fraction of requests (test pair, c' != c) whose argmax becomes c'         |
| target_probability       | mean probability of c' after the intervention                             |
| control_kl               | mean KL(clean || intervened) when asked to keep the answer (c' = c)       |
| distance_to_ground_truth | mean squared distance to the ground truth's states / total variance     |
| transfer_from            | "" when fitted on `seed` itself, else the seed it was fitted on          |

Learned methods are fitted on the task's train pairs and measured on its test pairs, at mlp.hook_pre
(where the ground truth is exact: `_ground_truth`). A transferred row applies the method fitted on
`transfer_from` to `seed` through the one-to-one unit matching (`_transfer`).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from torch import nn

from ..errors import UniversalityError
from ..tasks import GroupTask
from ._ground_truth import IrrepRotation
from ._learned import AffineSteering, MeanDifference, NonlinearSteering, SteeringVector
from ._steered import steered_model, steering_measures, steering_requests
from ._transfer import Transferred, align_units

__all__ = ["steering_table", "COLUMNS", "METHODS", "LEARNED"]

COLUMNS = ["seed", "method", "success_rate", "target_probability", "control_kl", "distance_to_ground_truth",
           "transfer_from"]
LEARNED = ("mean_difference", "steering_vector", "affine", "nonlinear")
METHODS = ("ground_truth", *LEARNED)


def steering_table(task: GroupTask, models: Mapping[object, nn.Module], *, key_irreps: Mapping | None = None,
                   per_pair: int | None = None, nonlinear: Mapping | None = None, transfer: bool = True,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (seed, method), plus one per (seed, learned method, other seed) when `transfer` (module
    docstring), in `COLUMNS`.

    task : the composition task every model was trained on (its train / test split is used)
    models : {seed: GroupMLP}
    key_irreps : {seed: irrep labels} for the ground truth; None or a missing seed = `key_irreps` of the model
    per_pair : targets per test pair (seeded by `seed`); None = every c' != c
    nonlinear : keyword arguments of `NonlinearSteering` (objective, steps, width, ...)

    >>> from universality.groups import make_group
    >>> from universality.tasks import composition_task
    >>> from universality.models import GroupMLP
    >>> task = composition_task(make_group("C5"), 0.7, seed=0)
    >>> table = steering_table(task, {0: GroupMLP(5, embed_dim=8, hidden=16)}, key_irreps={0: ["k=1+k=4"]},
    ...                        nonlinear={"steps": 5})
    >>> table.method.tolist()
    ['ground_truth', 'mean_difference', 'steering_vector', 'affine', 'nonlinear']
    """
    if not models:
        raise UniversalityError("steering_table needs at least one model: pass {seed: GroupMLP}")
    test = ~task.train
    if not test.any():
        raise UniversalityError("the task has no test pairs to measure steering on; split it with train_fraction < 1")
    steered, truth, requests, references, fitted = {}, {}, {}, {}, {}
    for name, model in models.items():
        s = steered[name] = steered_model(model, task)
        truth[name] = IrrepRotation(s, None if key_irreps is None else key_irreps.get(name))
        requests[name] = steering_requests(s, test, per_pair=per_pair, seed=seed)
        pairs, targets = requests[name]
        references[name] = truth[name](s.hidden[pairs], s.answer[pairs], targets)
        fitted[name] = {"mean_difference": MeanDifference().fit(s, task.train),
                        "steering_vector": SteeringVector().fit(s, task.train),
                        "affine": AffineSteering().fit(s, task.train),
                        "nonlinear": NonlinearSteering(seed=seed, **dict(nonlinear or {})).fit(s, task.train)}
    rows = []
    for name, s in steered.items():
        methods = {"ground_truth": truth[name], **fitted[name]}
        for method, intervention in methods.items():
            rows.append({"seed": name, "method": method, "transfer_from": "",
                         **steering_measures(s, intervention, requests[name], references[name])})
        if not transfer:
            continue
        for other in steered:
            if other == name:
                continue
            alignment = align_units(steered[other], s)
            for method in LEARNED:
                moved = Transferred(fitted[other][method], alignment)
                rows.append({"seed": name, "method": method, "transfer_from": str(other),
                             **steering_measures(s, moved, requests[name], references[name])})
    return pd.DataFrame.from_records(rows, columns=COLUMNS)
