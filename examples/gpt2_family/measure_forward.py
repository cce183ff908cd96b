"""What streaming the GPT-2-small family costs on this machine, next to what comparing it costs.

In one process, on the models `make_family.py` wrote:
1. load every model with `universality.models.load_model` (as the pretrained kind does); the
   process's peak RSS (`ru_maxrss`) right after loading, and again after every weight has been read
   once (transformers 5 memory-maps safetensors, so loading alone touches few pages); the weights'
   bytes (unique parameters, the tied LM head counted once) and the files' bytes;
2. the hooked forward rate of the first model: `adapter.run(rows, names)` with the 12
   `blocks.{l}.mlp.hook_post` unit sets, as `stream_activations` calls it, on real rows of
   `data.txt` (BOS + text), `--tokens` tokens per call (16 rows x 128 or 2 rows x 1024 by
   default), at 1 and 2 torch threads; median of `--runs` timed calls after one warm-up call;
3. the float32 GEMM rate at one cross-moment block's shape: `a.T @ b`, a and b [1024, 3072]
   (2 x 1024 x 3072^2 = 19.3 GFLOP), median of `--gemm-runs` after a warm-up, at 1 and 2 threads;
4. the ratio forward cost / cross-moment cost per token for the family: forward = models / rate
   seconds per token; cross moments = 2 x pairs x (12 x 3072)^2 FLOP per token (27.2 GFLOP for 5
   models, 10 pairs) at the GEMM rate. Above 1, streaming dominates; below 1, the comparison does.

The machine is shared: the 1-minute load average before and after is in the output, and each
figure also per CPU second of this process (`time.process_time`), which other jobs inflate less than
wall time: at 1 thread it approximates the rate on an idle core. The last line
printed is one JSON object of the figures.

    PYTHONPATH=src .venv/bin/python examples/gpt2_family/measure_forward.py [MODELS_DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from universality.collect import select_unit_sets  # noqa: E402
from universality.models import load_model  # noqa: E402
from universality.tokens import tokens_from_text_files  # noqa: E402

HERE = Path(__file__).resolve().parent
GEMM_SHAPE = (1024, 3072)  # tokens, units of one layer


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def median_seconds(call, runs: int, warmup: int = 1) -> tuple[float, list[float], float]:
    """(median wall seconds, every run's wall seconds, median CPU seconds of this process) of `call()`."""
    for _ in range(warmup):
        call()
    times, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), times, statistics.median(cpu)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", nargs="?", type=Path, default=HERE / "models")
    parser.add_argument("--runs", type=int, default=3, help="timed forward calls per setting (after 1 warm-up)")
    parser.add_argument("--gemm-runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per forward call")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(args.threads))
    load_before = os.getloadavg()[0]

    # 1) load the family
    dirs = sorted((p for p in args.models_dir.glob("seed*") if p.is_dir() and not p.name.endswith(".partial")),
                  key=lambda p: int(p.name[4:]))
    if len(dirs) < 2:
        raise SystemExit(f"no model family in {args.models_dir}: run make_family.py first")
    start = time.perf_counter()
    adapters = [load_model(str(d)) for d in dirs]
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_gib()
    weight_bytes = sum(p.numel() * p.element_size() for a in adapters for p in a.model.parameters())
    file_bytes = sum(f.stat().st_size for d in dirs for f in d.glob("*.safetensors"))
    with torch.no_grad():  # read every weight once (page in the memory-mapped files)
        checksum = sum(float(p.double().sum()) for a in adapters for p in a.model.parameters())
    rss_touched = peak_rss_gib()
    print(f"loaded {len(adapters)} models in {load_s:.1f} s: weights {weight_bytes / 1e9:.2f} GB "
          f"(files {file_bytes / 1e9:.2f} GB); peak RSS {rss_loaded:.2f} GiB after loading, "
          f"{rss_touched:.2f} GiB once every weight was read (checksum {checksum:.3f})")

    # 2) hooked forward rate of one model
    adapter = adapters[0]
    names = select_unit_sets(adapter.unit_sets, ["blocks.*.mlp.hook_post"])
    units = sum(adapter.unit_sets[n] for n in names)
    data = args.models_dir / "data.txt"
    forward = {}
    for seq_len in args.seq_lens:
        rows = tokens_from_text_files(data, adapter, seq_len=seq_len, max_rows=max(1, args.tokens // seq_len))
        for threads in args.threads:
            torch.set_num_threads(threads)
            median, times, cpu = median_seconds(lambda: adapter.run(rows, names), args.runs)
            rate = rows.numel() / median
            forward[f"{threads}t_{seq_len}"] = {"threads": threads, "rows": rows.shape[0], "seq_len": seq_len,
                                                "seconds": [round(t, 3) for t in times], "tokens_per_s": round(rate, 1),
                                                "tokens_per_cpu_s": round(rows.numel() / cpu, 1)}
            print(f"forward {rows.shape[0]} x {seq_len} tokens, {len(names)} unit sets ({units} units), {threads} "
                  f"thread(s): median {median:.3f} s of {[round(t, 3) for t in times]} -> {rate:.0f} tokens/s "
                  f"({rows.numel() / cpu:.0f} per CPU second)", flush=True)

    # 3) GEMM at the shape of one cross-moment block
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(*GEMM_SHAPE, generator=g), torch.randn(*GEMM_SHAPE, generator=g)
    flop = 2 * GEMM_SHAPE[0] * GEMM_SHAPE[1] ** 2
    gemm = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        median, times, cpu = median_seconds(lambda: a.T @ b, args.gemm_runs, warmup=2)
        gemm[f"{threads}t"] = {"threads": threads, "seconds": [round(t, 4) for t in times],
                               "gflop_per_s": round(flop / median / 1e9, 1),
                               "gflop_per_cpu_s": round(flop / cpu / 1e9, 1)}
        print(f"GEMM a.T @ b, a, b {list(GEMM_SHAPE)} ({flop / 1e9:.1f} GFLOP), {threads} thread(s): "
              f"median {median:.3f} s -> {flop / median / 1e9:.1f} GFLOP/s", flush=True)

    # 4) forward vs cross moments per token, for the whole family
    models, family_units = len(adapters), units
    pairs = models * (models - 1) // 2
    cross_flop = 2 * pairs * family_units ** 2
    ratios = {}
    for key, f in forward.items():
        t = f["threads"]
        forward_s = models / f["tokens_per_s"]
        cross_s = cross_flop / (gemm[f"{t}t"]["gflop_per_s"] * 1e9)
        ratios[key] = {"forward_s_per_token": round(forward_s, 5), "cross_moment_s_per_token": round(cross_s, 5),
                       "forward_over_cross": round(forward_s / cross_s, 3)}
        print(f"{t} thread(s), rows of {f['seq_len']}: forward of {models} models {forward_s * 1e3:.2f} ms/token, "
              f"cross moments ({cross_flop / 1e9:.1f} GFLOP) {cross_s * 1e3:.1f} ms/token: "
              f"ratio {forward_s / cross_s:.3f}")
    print(json.dumps({
        "models": models, "units_per_model": family_units, "load_s": round(load_s, 2),
        "weight_bytes": weight_bytes, "file_bytes": file_bytes,
        "peak_rss_gib_after_load": round(rss_loaded, 3), "peak_rss_gib_weights_read": round(rss_touched, 3),
        "forward": forward, "gemm": gemm, "cross_moment_flop_per_token": cross_flop, "ratios": ratios,
        "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
