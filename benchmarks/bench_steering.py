"""How well does each steering method move a grokked group-composition MLP's answer, against the ground truth?

Trains `--seeds` seeds of the test's model (GroupMLP embed 32, hidden 64; AdamW lr 3e-2, train fraction
0.7, stop at 100% test accuracy) on `--group` composition, then `steering.steering_table` at mlp.hook_pre:
every method fitted on the train pairs and measured on every (test pair, c' != c) request, and each
learned method transferred between the seeds through the one-to-one unit matching. Prints the table and
last a JSON object: the mean over seeds (own fits) of each method's success rate,
`{"ground_truth_steering_success", "steering_vector_success", "mean_difference_success", "affine_success",
"learned_nonlinear_success", "transferred_nonlinear_success", "seconds"}`.

Run: `.venv/bin/python benchmarks/bench_steering.py --group C29 --seeds 2`
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from universality.groups import make_group
from universality.steering import steering_table
from universality.tasks import composition_task
from universality.train import GroupMLPConfig, GroupTrainConfig, train_group_seed

MODEL = GroupMLPConfig(embed_dim=32, hidden=64)
TRAIN = GroupTrainConfig(epochs=3000, lr=3e-2, train_fraction=0.7, log_every=25, checkpoints=0,
                         stop_at_test_accuracy=1.0, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="C29")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps of the nonlinear steerer")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    task = composition_task(make_group(args.group), TRAIN.train_fraction, seed=0)
    models = {}
    for seed in range(args.seeds):
        trained = train_group_seed(task, MODEL, TRAIN, seed=seed)
        print(f"seed {seed}: test accuracy {trained.curve[-1]['test_acc']:.4f} at epoch {trained.curve[-1]['epoch']}",
              flush=True)
        models[seed] = trained.model
    table = steering_table(task, models, nonlinear={"steps": args.steps})
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(4).to_string())
    own = table[table.transfer_from == ""].groupby("method").success_rate.mean()
    moved = table[table.transfer_from != ""].groupby("method").success_rate.mean()
    print(json.dumps({
        "ground_truth_steering_success": round(float(own["ground_truth"]), 4),
        "steering_vector_success": round(float(own["steering_vector"]), 4),
        "mean_difference_success": round(float(own["mean_difference"]), 4),
        "affine_success": round(float(own["affine"]), 4),
        "learned_nonlinear_success": round(float(own["nonlinear"]), 4),
        "transferred_nonlinear_success": round(float(moved.get("nonlinear", float("nan"))), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
