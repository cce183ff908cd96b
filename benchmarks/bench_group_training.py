"""How much faster is the project's group trainer than a plain implementation of the paper's step?

Both sides train `--seeds` seeds of the S5 MLP at the paper's sizes (embed 256, hidden 128) on
composition with train fraction 0.6 (8640 train pairs), `--epochs` full-batch epochs each, one
seed after another, AdamW (lr 1e-3, betas (0.9, 0.98), weight decay 1), float64 cross-entropy:

1. project: `train_group_seeds` with `GroupTrainConfig` defaults (curve every 100 epochs, 30
   checkpoints): forward through the per-element tables T_L[a] + T_R[b];
2. reference: the paper's MLP as written, concat(E_L[a], E_R[b]) -> Linear(512, 128, bias=False)
   -> ReLU -> Linear(128, 120, bias=False), and a bare training loop.

First both sides compute the loss and gradients of one step from the same weights (copied from the
project model) and must agree to 1e-6 relative. Then the two are timed alternately `--repeats`
times; rates are medians, in seed-epochs per second. The last line printed is JSON:
`{"seeds", "seed_epochs_per_s", "reference_seed_epochs_per_s", "speedup"}` (speedup > 1: project wins).

Run: `.venv/bin/python benchmarks/bench_group_training.py --epochs 300 --threads 2`
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from universality.groups import make_group
from universality.tasks import composition_task
from universality.train import GroupMLPConfig, GroupTrainConfig, build_group_model, train_group_seeds

TOLERANCE = 1e-6


class ReferenceMLP(nn.Module):
    """The paper's MLP as written: (a, b) [pairs] -> logits [pairs, order]."""

    def __init__(self, order: int, embed_dim: int = 256, hidden: int = 128):
        super().__init__()
        self.embed_left = nn.Embedding(order, embed_dim)
        self.embed_right = nn.Embedding(order, embed_dim)
        self.linear = nn.Linear(2 * embed_dim, hidden, bias=False)
        self.unembed = nn.Linear(hidden, order, bias=False)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embed_left(left), self.embed_right(right)], dim=1)  # [pairs, 2 embed_dim]
        return self.unembed(F.relu(self.linear(x)))  # [pairs, order]

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> "ReferenceMLP":
        """Take the project model's weights (same names, `embed_*` as parameters there)."""
        self.embed_left.weight.copy_(model.embed_left)
        self.embed_right.weight.copy_(model.embed_right)
        self.linear.weight.copy_(model.linear.weight)
        self.unembed.weight.copy_(model.unembed.weight)
        return self


def reference_seconds(task, config: GroupTrainConfig, seeds: list[int]) -> float:
    """Seconds to train every seed with the reference model and a bare loop."""
    train = task.train
    left, right, target = task.left[train], task.right[train], task.target[train]  # [train]
    start = time.perf_counter()
    for seed in seeds:
        model = ReferenceMLP(task.group.order).copy_from(build_group_model(GroupMLPConfig(), task.group.order, seed))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                      weight_decay=config.weight_decay)
        for _ in range(config.epochs):
            loss = F.cross_entropy(model(left, right).double(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def project_seconds(task, config: GroupTrainConfig, seeds: list[int]) -> float:
    """Seconds to train every seed with the project's trainer."""
    start = time.perf_counter()
    train_group_seeds(task, GroupMLPConfig(), config, seeds)
    return time.perf_counter() - start


def check_first_step(task, seed: int = 0) -> float:
    """Largest relative difference of the first loss and gradients (project vs reference)."""
    train = task.train
    left, right, target = task.left[train], task.right[train], task.target[train]
    model = build_group_model(GroupMLPConfig(), task.group.order, seed)
    reference = ReferenceMLP(task.group.order).copy_from(model)
    losses = []
    for side in (model, reference):
        loss = F.cross_entropy(side(left, right).double(), target)
        loss.backward()
        losses.append(loss.item())
    grads = {"embed_left": (model.embed_left.grad, reference.embed_left.weight.grad),
             "embed_right": (model.embed_right.grad, reference.embed_right.weight.grad),
             "linear": (model.linear.weight.grad, reference.linear.weight.grad),
             "unembed": (model.unembed.weight.grad, reference.unembed.weight.grad)}
    errors = {"loss": abs(losses[0] - losses[1]) / abs(losses[1])}
    errors |= {name: ((a - b).norm() / b.norm()).item() for name, (a, b) in grads.items()}
    worst = max(errors.values())
    print(f"first step, loss {losses[0]:.8f} vs {losses[1]:.8f}; relative errors:",
          {name: f"{e:.1e}" for name, e in errors.items()})
    if worst > TOLERANCE:
        raise SystemExit(f"project and reference disagree on the first step: {worst:.2e} > {TOLERANCE}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)  # nothing draws from it; set so that nothing unseeded could creep in
    torch.set_num_threads(args.threads)
    config = GroupTrainConfig(epochs=args.epochs, threads=args.threads)
    task = composition_task(make_group("S5"), config.train_fraction, seed=0)
    seeds = list(range(args.seeds))
    check_first_step(task)
    torch.optim.AdamW([nn.Parameter(torch.zeros(1))])  # warm-up: the first AdamW in a process takes ~1 s
    project, reference = [], []
    for repeat in range(args.repeats):
        project.append(project_seconds(task, config, seeds))
        reference.append(reference_seconds(task, config, seeds))
        print(f"repeat {repeat}: project {project[-1]:.2f} s, reference {reference[-1]:.2f} s", flush=True)
    seed_epochs = args.seeds * args.epochs
    rate, reference_rate = seed_epochs / statistics.median(project), seed_epochs / statistics.median(reference)
    print(f"S5 MLP: {1000 / rate:.1f} s per 1000 epochs per seed (reference {1000 / reference_rate:.1f} s)")
    print(json.dumps({
        "seeds": args.seeds,
        "seed_epochs_per_s": round(rate, 2),
        "reference_seed_epochs_per_s": round(reference_rate, 2),
        "speedup": round(rate / reference_rate, 3),
    }))


if __name__ == "__main__":
    main()
