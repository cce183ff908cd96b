"""SAE benchmark of issue 11: trainer throughput against a plain PyTorch loop (`bench_sae_train.py`) and
matching time for 2 x 32768 latents on the sparse path with the share of exact-Hungarian matches it
reproduces (`bench_sae_match.py`). Each runs as its own process (so neither inherits the other's
allocations or thread pools); their last-line JSON objects are merged. Not a test.

    python benchmarks/bench_sae.py [--repeats 3] [--threads 2]

Last line: one JSON object with at least `train_speedup` and `sparse_matching_agreement`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _last_json(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    repeats = str(args.repeats)
    result = _last_json("bench_sae_train.py", "--repeats", repeats, "--threads", str(args.threads))
    result |= _last_json("bench_sae_match.py", "--repeats", repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
