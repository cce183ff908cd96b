"""Throughput of the one-pass moment engine against the per-pair approach of the reference code.

In one run on one machine:
1. peak: torch's float32 GEMM on the accumulator's own shapes (best of several);
2. ours: `MomentAccumulator.update` over MODELS x UNITS x TOKENS (all pairs, Grams for the
   baseline), then `compare_moments` (correlations + exact rotation baseline, no second pass);
3. reference: the approach of the Universal Neurons reference code written as fast as it allows
   (same torch matmul, same batch size): one model pair at a time, float32 products added into
   float64 one-pass sums (sum x, sum x^2, sum xy), then a second pass over the data with each
   model's units rotated inside each layer (both directions, so every unit of both models gets a
   baseline, as ours does), then correlations and maxima.

`gflops` counts only the useful cross-moment multiply-adds, 2 x tokens x units_a x units_b per
model pair, per second of our wall time. The last line is one JSON object.

    python benchmarks/bench_moments.py [--layers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from universality.compare import compare_moments, haar_rotation
from universality.moments import MomentAccumulator


def activation_batches(models: int, layers: int, units: int, batch: int, distinct: int = 2):
    """`distinct` different batches, cycled to make the stream (generation is not what we time)."""
    g = torch.Generator().manual_seed(0)
    width = units // layers
    out = []
    for _ in range(distinct):
        latent = torch.randn(batch, 64, generator=g)
        out.append({f"model{m}": {f"blocks.{l}.mlp.hook_post":
                                  torch.relu(latent @ torch.randn(64, width, generator=g)
                                             + torch.randn(batch, width, generator=g))
                                  for l in range(layers)} for m in range(models)})
    return out


def peak_gflops(units: int, batch: int, models: int, repeats: int = 5) -> float:
    """Best float32 GEMM rate over the shapes the accumulator runs: [units, batch] @ [batch, k units]."""
    best = 0.0
    for k in range(1, models):
        left, right = torch.randn(batch, units), torch.randn(batch, k * units)
        out = torch.zeros(units, k * units)
        for _ in range(repeats):
            start = time.perf_counter()
            out.addmm_(left.T, right)
            best = max(best, 2 * batch * units * k * units / (time.perf_counter() - start) / 1e9)
    return best


def run_ours(batches, steps: int) -> float:
    start = time.perf_counter()
    acc = MomentAccumulator({m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batches[0].items()})
    for step in range(steps):
        acc.update(batches[step % len(batches)])
    compare_moments(acc, rotations=1, seed=0)
    return time.perf_counter() - start


def run_reference(batches, steps: int) -> float:
    start = time.perf_counter()
    names = list(batches[0])
    rotations = {(m, s): haar_rotation(x.shape[1], seed=i).float()
                 for i, (m, s, x) in enumerate((m, s, x) for m, sets in batches[0].items() for s, x in sets.items())}

    def whole(batch, model, rotate=False):
        parts = [x @ rotations[(model, s)].T if rotate else x for s, x in batch[model].items()]
        return torch.cat(parts, dim=1)

    def one_pass(pair, rotate_a, rotate_b):
        a, b = pair
        sums = None
        for step in range(steps):
            batch = batches[step % len(batches)]
            xa, xb = whole(batch, a, rotate_a), whole(batch, b, rotate_b)
            terms = (xa.sum(0), xb.sum(0), (xa * xa).sum(0), (xb * xb).sum(0), xa.T @ xb)
            terms = [t.double() for t in terms]
            sums = terms if sums is None else [s.add_(t) for s, t in zip(sums, terms)]
        n = steps * xa.shape[0]
        sa, sb, saa, sbb, sab = sums
        corr = (sab - torch.outer(sa, sb) / n) / torch.outer(saa - sa ** 2 / n, sbb - sb ** 2 / n).sqrt()
        return corr.max(dim=1).values, corr.max(dim=0).values

    for pair in itertools.combinations(names, 2):
        one_pass(pair, False, False)  # actual correlations, both directions
        one_pass(pair, False, True)  # baseline of a's units: b rotated (a second pass over the data)
        one_pass(pair, True, False)  # baseline of b's units: a rotated
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8, help="unit sets per model (units split evenly)")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = activation_batches(args.models, args.layers, args.units, args.batch)
    steps = args.tokens // args.batch
    peak = peak_gflops(args.units, args.batch, args.models)
    ours, reference = [], []
    for _ in range(args.repeats):  # interleaved, so machine load hits both alike
        ours.append(run_ours(batches, steps))
        reference.append(run_reference(batches, steps))
        print(f"ours {ours[-1]:.2f} s, reference {reference[-1]:.2f} s", flush=True)
    pairs = args.models * (args.models - 1) // 2
    useful = 2 * steps * args.batch * args.units * args.units * pairs
    gflops = useful / statistics.median(ours) / 1e9
    peak = max(peak, peak_gflops(args.units, args.batch, args.models))  # peak measured again, after
    print(json.dumps({
        "models": args.models, "units": args.units, "layers": args.layers, "tokens": steps * args.batch,
        "ours_s": round(statistics.median(ours), 3), "reference_s": round(statistics.median(reference), 3),
        "gflops": round(gflops, 1), "peak_gflops": round(peak, 1), "efficiency": round(gflops / peak, 3),
        "speedup_vs_reference": round(statistics.median(reference) / statistics.median(ours), 2),
    }))


if __name__ == "__main__":
    main()
