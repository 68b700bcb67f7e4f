"""Tokenization throughput and what the tokenized cache saves, on the real UltraFeedback sample.

    python experiments/bench_tokenize.py [--path TRAIN.jsonl --eval-path EVAL.jsonl]

Builds the train and eval splits (by default the 1,000/200 UltraFeedback sample in ../shared/data) three times with SmolLM2's tokenizer (ChatML) into a fresh cache directory: a miss
(load, filter, tokenize, write), a hit (load, filter, read), and one with the cache off. Prints seconds and
rows/s for each, and the entry's size. Tokenizer only: no model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefopt.config import DatasetConfig  # noqa: E402
from prefopt.data import build_datasets  # noqa: E402
from prefopt.models import load_tokenizer  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data" / "ultrafeedback" / "uf_binarized_h4schema_train_1000.jsonl"
DEFAULT_EVAL = DEFAULT.with_name("uf_binarized_h4schema_eval_200.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", default=str(DEFAULT))
    parser.add_argument("--eval-path", default=str(DEFAULT_EVAL))
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    args = parser.parse_args()
    tokenizer = load_tokenizer("tiny")  # SmolLM2's tokenizer
    with tempfile.TemporaryDirectory() as cache_dir:
        def config(cache: bool):
            return OmegaConf.structured(DatasetConfig(
                name="ultrafeedback_binarized", path=args.path, eval_path=args.eval_path, max_train_rows=None,
                max_length=args.max_length, max_prompt_length=args.max_prompt_length, filters=["empty"],
                cache=cache, cache_dir=cache_dir))

        print(f"data {args.path}, max_length {args.max_length}, max_prompt_length {args.max_prompt_length}")
        for label, cache in (("cache miss", True), ("cache hit", True), ("no cache", False)):
            start = time.perf_counter()
            data = build_datasets(config(cache), tokenizer, "paired")
            seconds = time.perf_counter() - start
            n = len(data.train) + len(data.eval)
            tokens = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in data.train)
            print(f"{label:>10}: {seconds:6.2f} s for train+eval ({n} pairs, {n / seconds:7.0f} pairs/s); "
                  f"train tokens {tokens}")
        sizes = [p.stat().st_size for p in Path(cache_dir).glob("*.npz")]
        print(f"cache entries: {len(sizes)}, {sum(sizes) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
