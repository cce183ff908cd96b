"""Seconds for one unit set's random-rotation baseline, dense Haar against the fast rotation.

`rotation_seconds` times what the baseline does per unit set and rotation: build Q (through
`rotation`, whose QRs run on one thread whatever `threads` says), one `rotate_columns` on a
[rows, width] float32 cross-moment block, and `rotated_variances` on a width x width float64 Gram
(timing does not depend on the values, so the Gram is a Gaussian matrix). Dense Haar at 16384
(QR and Q G at O(n^3), about 10 GB) is projected from 8192 by n^3 scaling unless --haar-16384.
Also times torch's QR of a 3072 x 3072 Gaussian on 1 and 2 threads (the issue: 2.5 s against
11-12 s on a busy machine). The last line is one JSON object.

    python benchmarks/bench_rotations.py [--repeats 3] [--haar-16384]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from universality.compare import rotation


def rotation_seconds(width: int, kind: str, rows: int = 4096, *, threads: int, repeats: int = 3) -> float:
    """Median seconds over `repeats` runs of: build Q, `rotate_columns` of [rows, width] float32,
    `rotated_variances` of a [width, width] float64 Gram, with torch on `threads` threads."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    cross = torch.randn(rows, width, generator=generator)
    gram = torch.randn(width, width, generator=generator, dtype=torch.float64)
    seconds = []
    for r in range(repeats):
        start = time.perf_counter()
        q = rotation(kind, seed=0, unit_set_index=0, rotation_index=r, size=width)
        q.rotate_columns(cross)
        q.rotated_variances(gram)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def qr_seconds(width: int, threads: int, repeats: int = 3) -> float:
    """Median seconds of torch.linalg.qr on a [width, width] float64 Gaussian, on `threads` threads."""
    torch.set_num_threads(threads)
    z = torch.randn(width, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.linalg.qr(z)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--haar-16384", action="store_true", help="measure dense Haar at 16384 (minutes, ~10 GB)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    qr = {t: qr_seconds(3072, t, args.repeats) for t in (1, 2)}
    print(f"QR 3072 x 3072 float64: 1 thread {qr[1]:.2f} s, 2 threads {qr[2]:.2f} s", flush=True)
    results = []
    print(f"{'width':>6} {'kind':>5} {'threads':>7} {'seconds':>8}  note", flush=True)
    for width in (3072, 16384):
        for kind in ("haar", "fast"):
            for threads in (1, 2):
                note = "measured"
                if kind == "haar" and width == 16384 and not args.haar_16384:
                    seconds = rotation_seconds(8192, kind, threads=threads, repeats=1) * (16384 / 8192) ** 3
                    note = "projected: 8192 measured once x 8 (n^3)"
                else:
                    repeats = 1 if kind == "haar" and width == 16384 else args.repeats
                    seconds = rotation_seconds(width, kind, threads=threads, repeats=repeats)
                results.append({"width": width, "kind": kind, "threads": threads, "seconds": round(seconds, 2),
                                 "note": note})
                print(f"{width:>6} {kind:>5} {threads:>7} {seconds:>8.2f}  {note}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)
    print(json.dumps({"qr_3072_s": {str(t): round(s, 2) for t, s in qr.items()}, "rows": 4096, "results": results}))


if __name__ == "__main__":
    main()
