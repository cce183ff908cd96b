"""SAE latent matching (issue 11 part 3): seconds to match two dictionaries of 32768 latents at
d_in 512 on the sparse path, and how much of the exact Hungarian assignment the sparse path
reproduces where both run (2 x 4096). Not a test; prints progress and, last, one JSON line.

    .venv/bin/python benchmarks/bench_sae_match.py [--repeats 3] [--latents 32768] [--check-latents 4096]

Dictionaries, like two SAEs of one layer: 40% of a's atoms shared with b under a permutation (b's
copy: the atom plus noise of norm 0.2-0.9, cosine ~0.74-0.98), the rest random unit vectors.
`sparse_matching_s`: median over `repeats` of `saes.match(a, b)` (decoders only; default
`dense_limit` 20000, so the sparse top-16 graph), with torch on 2 threads. `gemm_s` times the
float32 [latents, d_in] x [d_in, latents] product alone (in 512-row tiles, as the sparse path reads
it), the floor any exact MCS pays.
`sparse_matching_agreement`: at `check_latents`, the share of a's latents whose Hungarian partner
on the sparse path (dense_limit lowered below the width) equals the dense Hungarian's; `_shared`
over the planted shared atoms, `_random` for two random dictionaries (no structure at all: the
hardest case, where the optimum spreads over many near-equal cosines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from universality.saes import match, random_decoder

THREADS = 2
D_IN = 512
SHARED = 0.4


def planted(latents: int, d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """a, b float32 [latents, d_in] sharing SHARED of their atoms (module docstring); truth [latents]:
    b's twin of each latent of a (-1: none)."""
    g = torch.Generator().manual_seed(seed)
    shared = int(SHARED * latents)
    a, b = random_decoder(latents, d_in, seed=seed), random_decoder(latents, d_in, seed=seed + 1)
    noise = random_decoder(shared, d_in, seed=seed + 2) * (0.2 + 0.7 * torch.rand(shared, 1, generator=g))
    b[:shared] = a[:shared] + noise
    b[:shared] /= b[:shared].norm(dim=1, keepdim=True)
    order_a, order_b = torch.randperm(latents, generator=g), torch.randperm(latents, generator=g)
    where_a, where_b = torch.argsort(order_a).numpy(), torch.argsort(order_b).numpy()
    truth = np.full(latents, -1)
    truth[where_a[:shared]] = where_b[:shared]
    return a[order_a], b[order_b], truth


def product_in_tiles(a: torch.Tensor, b: torch.Tensor, rows: int = 512) -> None:
    """a @ b.T one [rows, latents_b] tile at a time, each dropped before the next."""
    for start in range(0, len(a), rows):
        tile = a[start:start + rows] @ b.T  # [rows, latents_b]
    del tile


def seconds(call, repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latents", type=int, default=32768)
    parser.add_argument("--check-latents", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch threads {torch.get_num_threads()}, load average at start: {os.getloadavg()[0]:.1f}", flush=True)

    a, b, truth = planted(args.check_latents, D_IN, seed=0)
    dense_s, dense = seconds(lambda: match(a, b), 1)
    sparse_s, sparse = seconds(lambda: match(a, b, dense_limit=args.check_latents - 1), 1)
    same = (sparse["hungarian_partner"] == dense["hungarian_partner"]).to_numpy()
    agreement, agreement_shared = float(same.mean()), float(same[truth >= 0].mean())
    shared_same = float((sparse["shared"] == dense["shared"]).mean())
    print(f"{args.check_latents} x {args.check_latents}: dense {dense_s:.1f} s, sparse {sparse_s:.1f} s; sparse "
          f"partner = dense for {agreement:.4f} of latents ({agreement_shared:.4f} of planted shared), shared "
          f"column equal for {shared_same:.4f}", flush=True)
    r_a, r_b = random_decoder(args.check_latents, D_IN, seed=10), random_decoder(args.check_latents, D_IN, seed=11)
    same_random = float((match(r_a, r_b)["hungarian_partner"]
                         == match(r_a, r_b, dense_limit=args.check_latents - 1)["hungarian_partner"]).mean())
    print(f"random dictionaries: sparse partner = dense for {same_random:.4f}", flush=True)

    a, b, truth = planted(args.latents, D_IN, seed=1)
    gemm_s, _ = seconds(lambda: product_in_tiles(a, b), 1)
    print(f"{args.latents} x {args.latents} float32 product alone (512-row tiles): {gemm_s:.1f} s", flush=True)
    match_s, table = seconds(lambda: match(a, b), args.repeats)
    said = table["shared"].to_numpy()
    right = said & (table["hungarian_partner"].to_numpy() == truth)
    precision, recall = right.sum() / max(said.sum(), 1), right.sum() / (truth >= 0).sum()
    print(f"{args.latents} x {args.latents} at d_in {D_IN}: {match_s:.1f} s ({table.attrs['matching']}, "
          f"left unmatched {table.attrs['left_unmatched']}); planted shared precision {precision:.4f}, "
          f"recall {recall:.4f}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)
    print(json.dumps({"sparse_matching_s": round(match_s, 2), "sparse_matching_agreement": round(agreement, 4),
                      "sparse_matching_agreement_shared": round(agreement_shared, 4),
                      "sparse_matching_agreement_random": round(same_random, 4),
                      "check_dense_s": round(dense_s, 2), "check_sparse_s": round(sparse_s, 2),
                      "gemm_s": round(gemm_s, 2), "precision": round(float(precision), 4),
                      "recall": round(float(recall), 4), "latents": args.latents, "check_latents": args.check_latents,
                      "d_in": D_IN, "threads": THREADS, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
