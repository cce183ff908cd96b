"""Throughput of the Ray backend against the in-process run of the same plan.

`ray_ratio` times `compare_activations` end to end (stream, merge, reduction) on the same synthetic
stream, in process (torch's default threads: every core) and with backend="ray" (`workers` actors of
one CPU each, on an embedded Ray started once beforehand; each Ray call includes starting its actors,
which import torch and build their batches). The ratio is tokens/s on Ray over tokens/s in process,
median of `repeats`. The last line printed is one JSON object.

    python benchmarks/bench_ray.py [--models 4] [--unit-sets 2] [--units 512] [--batches 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import torch

from universality.compare import compare_activations


class SyntheticBatches:
    """batches(start, stop): batch i is the (i mod `distinct`)-th of `distinct` batches made on first use
    in each process (ReLU of a shared 64-dim latent times per-unit weights, plus noise), so the stream
    costs nothing next to the moments; the cache never travels to the workers."""

    def __init__(self, models: int, unit_sets: int, units: int, batch_tokens: int, distinct: int = 2):
        self.models, self.unit_sets, self.units, self.batch_tokens, self.distinct = (models, unit_sets, units,
                                                                                    batch_tokens, distinct)
        self._cache = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def _units(self, latent: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """ReLU(latent W + noise), [batch_tokens, units]."""
        noise = torch.randn(self.batch_tokens, self.units, generator=g)
        return torch.relu(latent @ torch.randn(64, self.units, generator=g) + noise)

    def __call__(self, start: int, stop: int):
        if self._cache is None:
            g = torch.Generator().manual_seed(0)
            self._cache = []
            for _ in range(self.distinct):
                latent = torch.randn(self.batch_tokens, 64, generator=g)
                self._cache.append({f"model{m}": {f"set{s}": self._units(latent, g) for s in range(self.unit_sets)}
                                    for m in range(self.models)})
        return (self._cache[i % self.distinct] for i in range(start, stop))


def ray_ratio(*, models: int = 4, unit_sets: int = 2, units: int = 512, batch_tokens: int = 2048, batches: int = 64,
              workers: int = 2, repeats: int = 3, memory_budget=None, dtype: str = "float32") -> dict:
    """Tokens/s with backend="ray" (`workers` actors) over tokens/s in process, same plan, median of
    `repeats` runs each; returns the figures as a JSON-able dict (`ratio` is the headline)."""
    import ray
    if SyntheticBatches.__module__ != "__main__":  # imported: the workers cannot import this script by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[SyntheticBatches.__module__])
    make = SyntheticBatches(models, unit_sets, units, batch_tokens)
    tokens = batches * batch_tokens
    settings = dict(rotations=1, dtype=dtype, memory_budget=memory_budget)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    init_seconds = time.perf_counter() - started
    try:
        local, on_ray, passes = [], [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            result = compare_activations(lambda: make(0, batches), **settings)
            local.append(time.perf_counter() - started)
            started = time.perf_counter()
            compare_activations(make, backend="ray", workers=workers, batch_count=batches, **settings)
            on_ray.append(time.perf_counter() - started)
            passes = len(result.plan.passes)
    finally:
        ray.shutdown()
    local_rate, ray_rate = tokens / statistics.median(local), tokens / statistics.median(on_ray)
    return {"ratio": round(ray_rate / local_rate, 3), "local_tokens_per_s": round(local_rate),
            "ray_tokens_per_s": round(ray_rate), "local_seconds": [round(t, 2) for t in local],
            "ray_seconds": [round(t, 2) for t in on_ray], "ray_init_seconds": round(init_seconds, 2),
            "tokens": tokens, "passes": passes, "workers": workers, "local_threads": torch.get_num_threads(),
            "models": models, "unit_sets": unit_sets, "units": units, "batch_tokens": batch_tokens,
            "dtype": dtype}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--unit-sets", type=int, default=2)
    parser.add_argument("--units", type=int, default=512, help="units per unit set")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-budget", default=None, help='e.g. "60MB" for a multi-pass plan')
    args = parser.parse_args()
    figures = ray_ratio(models=args.models, unit_sets=args.unit_sets, units=args.units, batch_tokens=args.batch_tokens,
                        batches=args.batches, workers=args.workers, repeats=args.repeats,
                        memory_budget=args.memory_budget)
    print(f"Ray {figures['workers']} workers: {figures['ray_tokens_per_s']:,} tokens/s; in process "
          f"({figures['local_threads']} threads): {figures['local_tokens_per_s']:,} tokens/s; ratio {figures['ratio']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
