"""Make a family of 5 randomly initialised GPT-2-small models (seeds 0-4) and one shared tokenizer,
offline, for `family.toml` (issue 9 part 8: the reference study's shape on this machine).

Each model is GPT-2 small exactly: n_layer 12, n_embd 768, n_head 12, n_inner 3072 (12 x 3072 =
36,864 MLP neurons), n_positions 1024, vocab_size 50257, GELU (`gelu_new`), transformers'
GPT-2 initialisation under `torch.manual_seed(seed)`; saved with `save_pretrained` (safetensors,
the LM head tied to the token embedding, about 0.5 GB per model).

No GPT-2 tokenizer can be downloaded here, so one is trained locally: byte-level BPE with GPT-2's
pre-tokenizer regex, trained on 90% of this Python's standard-library `.py` files (a deterministic
split by a hash of the file path) to 256 bytes + 50,000 merges, then `<|endoftext|>` as id 50256 -
the same layout as GPT-2's (50,257 ids, `<|endoftext|>` = 50256 = BOS = EOS = UNK, no PAD), so the
models' vocab_size is GPT-2's and matches the tokenizer exactly: no embedding row is unreachable,
and every id the package reads (`convert_ids_to_tokens`, `decode`) is a real token. It is saved as
a transformers `GPT2TokenizerFast` (= `GPT2Tokenizer` in transformers 5) beside every model.

The token stream (`data.txt`) is the held-out 10% of the standard library, files joined by
`<|endoftext|>` (as GPT-2's training stream separates documents; the pretrained kind drops that
id as BOS): 3.1 MB of text, ~790k tokens: 6,169 rows of 128 tokens, or ~770 rows of 1024.

Idempotent: the tokenizer, the data file and each model are made only when missing (a model
directory is written under a temporary name and renamed when complete). A model saved earlier with
a different tokenizer is an error (delete it, or the directory). Prints each step's time and the
disk size; writes `family.json` (seeds, config, sha256 of every file).

    PYTHONPATH=src .venv/bin/python examples/gpt2_family/make_family.py [OUT_DIR] [--seeds 0 1 2 3 4]

OUT_DIR defaults to examples/gpt2_family/models (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
EOT = "<|endoftext|>"
N_MERGES = 50_000  # GPT-2's: 256 byte tokens + 50,000 merges + <|endoftext|> = 50,257 ids
HELD_OUT = 10  # one stdlib file in HELD_OUT goes to data.txt, the rest trains the tokenizer
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, n_positions=1024, vocab_size=50_257,
                  bos_token_id=50_256, eos_token_id=50_256)


def stdlib_files() -> tuple[Path, list[Path], list[Path]]:
    """(stdlib root, tokenizer-training files, held-out files): this Python's standard-library
    `.py` files outside site-packages, sorted, split by sha256 of the relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts and p.is_file())
    if not files:
        sys.exit(f"no .py files under {root}: cannot train a tokenizer")
    held = [p for p in files if int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % HELD_OUT == 0]
    held_set = set(held)
    return root, [p for p in files if p not in held_set], held


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(files: list[Path]):
    """Byte-level BPE, GPT-2 style, as a transformers GPT2TokenizerFast with <|endoftext|> = 50256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split, then bytes
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + N_MERGES, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator((read(p) for p in files), trainer, length=len(files))
    model = json.loads(tok.to_str())["model"]
    vocab, merges = dict(model["vocab"]), [tuple(m) for m in model["merges"]]
    if len(vocab) != GPT2_SMALL["vocab_size"] - 1:
        sys.exit(f"the BPE trainer stopped at {len(vocab)} tokens (wanted {GPT2_SMALL['vocab_size'] - 1}): "
                 "not enough training text")
    vocab[EOT] = len(vocab)  # 50256, as in GPT-2
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=GPT2_SMALL["n_positions"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_model(seed: int, directory: Path, tokenizer_dir: Path) -> None:
    """GPT-2 small from `seed`, saved with its tokenizer into `directory` (via a temporary name)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**GPT2_SMALL)
    model = transformers.GPT2LMHeadModel(config).eval()
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors; lm_head.weight is tied to transformer.wte.weight
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, tmp / name)
    tmp.rename(directory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=HERE / "models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (initialisation does not depend on it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    times = {}

    # 1) the tokenizer and the token stream
    tokenizer_dir = out / "tokenizer"
    root, train_files, held_files = stdlib_files()
    t = time.perf_counter()
    if (tokenizer_dir / "tokenizer.json").is_file():
        print(f"tokenizer: exists in {tokenizer_dir}")
    else:
        tokenizer = train_tokenizer(train_files)
        tmp = tokenizer_dir.with_name(tokenizer_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(tokenizer_dir)
        times["tokenizer_s"] = time.perf_counter() - t
        print(f"tokenizer: trained on {len(train_files)} files of {root} in {times['tokenizer_s']:.1f} s "
              f"({len(tokenizer)} ids)")
    data = out / "data.txt"
    if data.is_file():
        print(f"data: exists, {data}")
    else:
        t = time.perf_counter()
        tmp = data.with_name(data.name + ".partial")
        tmp.write_text(EOT.join(read(p) for p in held_files), encoding="utf-8")
        tmp.rename(data)
        print(f"data: {len(held_files)} held-out files, {data.stat().st_size / 1e6:.1f} MB -> {data} "
              f"({time.perf_counter() - t:.1f} s)")

    # 2) the models
    tokenizer_json = (tokenizer_dir / "tokenizer.json").read_bytes()
    for seed in args.seeds:
        directory = out / f"seed{seed}"
        if directory.is_dir():
            if (directory / "tokenizer.json").read_bytes() != tokenizer_json:
                sys.exit(f"{directory} holds another tokenizer than {tokenizer_dir}; delete it to remake it")
            print(f"seed {seed}: exists, {directory}")
            continue
        t = time.perf_counter()
        make_model(seed, directory, tokenizer_dir)
        times[f"seed{seed}_s"] = time.perf_counter() - t
        print(f"seed {seed}: {times[f'seed{seed}_s']:.1f} s, {disk_bytes(directory) / 1e6:.0f} MB -> {directory}",
              flush=True)

    # 3) a manifest; totals
    t = time.perf_counter()
    manifest = {
        "seeds": args.seeds, "config": GPT2_SMALL, "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizer": {"corpus": f"{root}/**/*.py except site-packages, sha256(path) % {HELD_OUT} != 0",
                      "files": len(train_files), "merges": N_MERGES,
                      "sha256": sha256(tokenizer_dir / "tokenizer.json")},
        "data": {"path": data.name, "files": len(held_files), "bytes": data.stat().st_size, "sha256": sha256(data)},
        "models": {f"seed{s}": {"sha256": sha256(out / f"seed{s}" / "model.safetensors")} for s in args.seeds},
    }
    (out / "family.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = time.perf_counter() - start
    print(f"manifest: {out / 'family.json'} ({time.perf_counter() - t:.1f} s to hash)")
    print(f"done in {total:.1f} s; {out} holds {disk_bytes(out) / 1e9:.2f} GB")
    print(json.dumps({"seconds": round(total, 2), "disk_bytes": disk_bytes(out),
                      **{k: round(v, 2) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
