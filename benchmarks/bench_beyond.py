"""The analyses beyond single neurons against the streaming pass they read (issue 10, performance):
every state-based similarity metric of every cross-model unit-set pair, and calibrated universality
with R = 32 rotations, each timed as a ratio to the streaming pass on the same data (target <= 0.25
each at 4 models x 2048 units x 65536 tokens). Not a test; the last line is one JSON object.

    .venv/bin/python benchmarks/bench_beyond.py [--layers 8] [--tokens 65536] [--repeats 3]

The stream is `bench_moments.activation_batches` (distinct batches cycled: generation is not timed);
the state is float32 on 2 threads, as a run's (the similarity pairs and the rotations then run on 2
single-threaded workers). Each figure is the median over `repeats`, the ratio taken against the median
streaming time of the same run. Calibration computes its 32 maxima from 16 rotations and their
antithetic partners (`compare._universality.rotated_maxima`).

Measured at the issue's size on 2 idle cores (README, "What they cost"): similarity 0.223 and 0.229,
calibration 0.171 and 0.177 of the stream, in two runs of `--repeats 5`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_moments import activation_batches
from universality.compare import compare_moments
from universality.moments import MomentAccumulator
from universality.similarity import METRICS
from universality.similarity._table import TOKEN_METRICS, similarity_table


def measure(*, models: int = 4, units: int = 2048, layers: int = 8, tokens: int = 65536, batch: int = 8192,
            repeats: int = 3, rotations: int = 32) -> dict:
    torch.set_num_threads(2)
    batches = activation_batches(models, layers, units, batch)
    state_metrics = tuple(m for m in METRICS if m not in TOKEN_METRICS)
    times = {"stream": [], "similarity": [], "calibration": []}
    for _ in range(repeats):
        began = time.perf_counter()
        acc = MomentAccumulator.for_batch(batches[0], dtype="float32")
        for step in range(tokens // batch):
            acc.update(batches[step % len(batches)])
        acc.end_stream()
        times["stream"].append(time.perf_counter() - began)
        comparison = compare_moments(acc, rotations=1, seed=0)
        began = time.perf_counter()
        similarity_table(acc, None, metrics=state_metrics, k=1, ridge=1e-3, seed=0, nulls=0, within_models=False)
        times["similarity"].append(time.perf_counter() - began)
        began = time.perf_counter()
        comparison.calibrate(rotations=rotations)
        times["calibration"].append(time.perf_counter() - began)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"models": models, "units": units, "layers": layers, "tokens": tokens, "rotations": rotations,
            "seconds": median, "similarity_over_stream": median["similarity"] / median["stream"],
            "calibration_over_stream": median["calibration"] / median["stream"],
            "runs": {name: [round(v, 2) for v in values] for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(layers=args.layers, tokens=args.tokens, repeats=args.repeats)))


if __name__ == "__main__":
    main()
