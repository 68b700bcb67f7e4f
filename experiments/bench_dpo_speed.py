"""prefopt's DPO step against TRL 1.16's DPOTrainer: same model, rows, batch size, max length and steps.

    flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py            # 8 steps, 2 rounds
    flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py --steps 6 --rounds 1
    python experiments/bench_dpo_speed.py --model tiny --steps 2 --rounds 1     # smoke check, seconds
    python experiments/bench_dpo_speed.py --configs trl,prefopt,prefopt_packed --max-length 1024
    python experiments/bench_dpo_speed.py --configs prefopt_packed --attn flex_attention   # a GPU machine
    flock /tmp/prefopt-heavy.lock python experiments/bench_dpo_speed.py --real-length --steps 4 --rounds 1
    python experiments/bench_dpo_speed.py --device cuda --model /tmp/gpu_model --real-length   # scripts/gpu_check.sh

Each configuration runs in its own child process (this script with --child), one after another, and the
list of configurations is repeated --rounds times, so a burst of load from other processes hits every
side alike. Children report JSON; the parent prints, per configuration, the median seconds per optimizer
step, pairs/s, tokens/s, peak RSS, achieved FLOP/s, and the ratios against TRL.

Definitions (the same for both sides):
- rows: the first steps*batch_size training pairs of the built-in sentiment data (prompt+chat template,
  SmolLM2-135M-Instruct fp32 on CPU), so in one epoch every side sees exactly these rows. --real-length: the
  first steps*batch_size pairs of the real UltraFeedback sample (../shared/data/ultrafeedback, or
  $PREFOPT_SHARED_DATA) whose prompt+chosen and prompt+rejected both take 500-1016 tokens with the model's chat
  template, max_length 1024 (the Zephyr recipe's), written to one file both sides read;
- --device cuda: both sides on the GPU with bf16 autocast over float32 master weights (--precision bf16,
  the default there; prefopt trainer.precision=bf16_autocast, TRL bf16=True); peak memory is then
  torch.cuda.max_memory_allocated, and the matmul peak is the best bf16 torch.mm rate;
- s/step: wall time of one optimizer step (forward, backward, optimizer), median over the steps;
  the first step is dropped (allocator warm-up). pairs/s = batch_size / median s/step;
- tokens/s: pairs/s x mean (prompt+chosen + prompt+rejected) tokens per pair of that side's own
  tokenization (TRL keeps the ChatML newline after <|im_end|>, prefopt does not: 1 token per completion);
- peak RSS: the child's ru_maxrss (model loading included);
- tok eff (token efficiency): real tokens / tokens the policy's decoder processed in training, padding
  counted as processed (prefopt: summary.json's throughput.token_efficiency; TRL: from the 2-D attention
  masks its decoder calls receive). trainer.packing (configs prefopt_packed*) runs no padding: 1.0;
- achieved FLOP/s: executed matmul FLOPs per step / median s/step, where executed FLOPs are counted from
  the shapes the decoder actually ran (a forward hook on every decoder call with grad enabled: tokens
  incl. padding x 2 x decoder-layer parameters, plus attention 4 x layers x hidden x width per token),
  plus the LM head at 2 x hidden x vocab per completion token, the sum x3 for forward+backward, plus one
  more forward of the same shapes when the reference runs every step. The peak is the best fp32 torch.mm
  rate over model-shaped matrices measured by a child of the same run.
The machine is shared: figures move with the load of other processes; the rounds show the spread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "trl": "TRL DPOTrainer, reference model (default)",
    "trl_pre": "TRL DPOTrainer, precompute_ref_log_probs=True",
    "prefopt": "prefopt, reference=precomputed (sweep default)",
    "prefopt_frozen": "prefopt, reference=frozen",
    "prefopt_plain": "prefopt, frozen, no prompt sharing/grouping",
    "prefopt_packed": "prefopt, precomputed, packed (trainer.packing)",
    "prefopt_packed_frozen": "prefopt, frozen, packed (trainer.packing)",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(args) -> float:
    """Peak GPU memory allocated (--device cuda) or the process's peak RSS (CPU), in MB."""
    if args.device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def real_length_rows(args, out: Path) -> int:
    """The real-length rows (see the docstring) as a prompt/chosen/rejected jsonl; returns how many."""
    from prefopt.data.registry import read_table
    from prefopt.data.tokenize import end_of_turn_token, render_completion, render_prompt
    from prefopt.models import load_tokenizer

    shared = Path(os.environ.get("PREFOPT_SHARED_DATA", ROOT.parent / "shared" / "data"))
    source = shared / "ultrafeedback" / "uf_binarized_h4schema_train_1000.jsonl"
    if not source.is_file():
        raise SystemExit(f"--real-length: {source} is absent (set PREFOPT_SHARED_DATA to the data folder)")
    tokenizer = load_tokenizer(args.model)
    eot = end_of_turn_token(tokenizer)
    wanted, kept = args.steps * args.batch_size, []
    for row in read_table(str(source), where="--real-length rows"):
        prompt = [{"role": "user", "content": row["prompt"]}]
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        prompt_text = render_prompt(tokenizer, prompt)
        n_prompt = len(tokenizer(prompt_text, add_special_tokens=False).input_ids)
        lengths = [n_prompt + len(tokenizer(render_completion(tokenizer, prompt, c, eot, prompt_text),
                                            add_special_tokens=False).input_ids) for c in (chosen, rejected)]
        if n_prompt <= 512 and all(500 <= n <= 1016 for n in lengths) and chosen.strip() != rejected.strip():
            kept.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
        if len(kept) == wanted:
            break
    if len(kept) < wanted:
        raise SystemExit(f"--real-length: only {len(kept)} rows of {source} take 500-1016 tokens; lower --steps")
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return len(kept)


class FlopCounter:
    """Executed matmul FLOPs of the policy's forwards that will be back-propagated (see the docstring)."""

    def __init__(self):
        self.active = False
        self.decoder_flops = 0.0
        self.head_rows = 0
        self.real_tokens = 0  # non-padding positions of 2-D attention masks (TRL's batches)
        self.processed_tokens = 0

    def attach(self, model, count_head: bool):
        import torch

        decoder = model.get_decoder()
        cfg = model.config
        layer_params = sum(p.numel() for layer in decoder.layers for p in layer.parameters() if p.dim() == 2)
        n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size

        def on_decoder(module, args, kwargs):
            if self.active and torch.is_grad_enabled() and module.training:
                rows, width = kwargs.get("input_ids", args[0] if args else None).shape
                self.decoder_flops += rows * width * (2 * layer_params + 4 * n_layers * hidden * width)
                mask = kwargs.get("attention_mask")
                if torch.is_tensor(mask) and mask.dim() == 2:
                    self.real_tokens += int(mask.sum())
                    self.processed_tokens += rows * width

        def on_head(module, args):
            if self.active and torch.is_grad_enabled() and module.training:
                self.head_rows += args[0].numel() // args[0].shape[-1]

        decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)
        if count_head:
            model.get_output_embeddings().register_forward_pre_hook(on_head)
        return 2 * hidden * model.get_output_embeddings().weight.shape[0]  # FLOPs per head row


def child_matmul(args) -> dict:
    import torch

    best = 0.0
    cuda = args.device == "cuda"
    shapes = [(2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576), (1024, 2048, 2048)]
    if cuda:  # the shapes of a 1-2B model's layers at a few thousand tokens, and a square one
        shapes = [(8192, 2048, 8192), (8192, 8192, 2048), (8192, 2048, 2048), (8192, 8192, 8192)]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    rates = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=dtype, device=args.device)
        b = torch.randn(k, n, dtype=dtype, device=args.device)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rate = 2 * m * k * n / statistics.median(times)
        rates[f"{m}x{k}x{n}"] = rate
        best = max(best, rate)
    return {"peak_flops": best, "rates": rates, "threads": torch.get_num_threads()}


def overrides_for(args, reference: str) -> list[str]:
    attn = [f"model.attn_implementation={args.attn}"] if args.attn else []
    if args.rows:  # --real-length: the selected file is both the training and the (unused) eval rows
        attn += ["dataset=generic", f"dataset.path={args.rows}", f"dataset.eval_path={args.rows}",
                 "dataset.max_prompt_length=512", "dataset.filters=[]"]
    if args.precision == "bf16":
        attn += ["trainer.precision=bf16_autocast"]
    model = [f"model={args.model}"] if not Path(args.model).is_dir() else [
        "model=smollm2-135m", f"model.name_or_path={args.model}"]
    return attn + model + ["benchmark=none", "loss=dpo", "beta=0.1", f"reference={reference}",
            f"dataset.max_train_rows={args.steps * args.batch_size}", f"dataset.max_length={args.max_length}",
            f"trainer.batch_size={args.batch_size}", "trainer.grad_accum=1", f"trainer.max_steps={args.steps}",
            "epochs=1", "trainer.eval_every=0", "trainer.save_model=false", "trainer.progress_bar=false",
            "optimizer.lr=5e-6", "dataset.max_eval_rows=4"]


def dataset_rows(args) -> list[dict]:
    """prefopt's training rows of this benchmark (same split, same cap), as prompt/chosen/rejected text."""
    from prefopt import data as data_lib
    from prefopt.models import load_tokenizer
    from tests.conftest import compose

    cfg = compose(overrides_for(args, "frozen"))
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    train = data_lib.build_datasets(cfg.dataset, tokenizer, "paired").train
    source = {row["index"]: row for row in data_lib.load_rows(cfg.dataset, cfg.dataset.train_split)}
    return [source[row["index"]] for row in train]


def child_prefopt(args, reference: str, plain: bool, packing: bool = False) -> dict:
    from prefopt.trainer import setup as trainer_setup
    from prefopt.trainer.loop import run
    from tests.conftest import compose

    counter = FlopCounter()
    original_load = trainer_setup.load_model
    per_row = {}

    def load_and_count(*a, **kw):
        model = original_load(*a, **kw)
        per_row["head"] = counter.attach(model, count_head=True)
        return model

    trainer_setup.load_model = load_and_count  # the policy the set-up loads
    overrides = overrides_for(args, reference)
    if plain:
        overrides += ["trainer.share_prompt=false", "trainer.group_by_length=false"]
    if packing:
        overrides += ["trainer.packing=true"]
    run_dir = Path(tempfile.mkdtemp(prefix="bench-prefopt-"))
    counter.active = True  # only grad-enabled train-mode forwards count: not precompute, not eval
    summary = run(compose(overrides), run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("split") == "train"]
    passes = 3 + (0 if reference == "precomputed" else 1)  # fwd+bwd, plus a reference forward per step
    flops = (counter.decoder_flops + counter.head_rows * per_row["head"]) / len(steps) * passes
    throughput = summary["throughput"]
    return {"step_seconds": [args.batch_size / r["pairs/s"] for r in steps],
            "tokens_per_pair": throughput["tokens/s"] * throughput["train_seconds"] / (len(steps) * args.batch_size),
            "peak_rss_mb": peak_memory_mb(args), "flops_per_step": flops, "reference": summary["reference"],
            "reference_seconds": throughput["reference_seconds"], "token_efficiency": throughput["token_efficiency"]}


def child_trl(args, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from prefopt.models import resolve_model_path

    rows = dataset_rows(args)
    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    path = resolve_model_path(args.model)
    counter = FlopCounter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # TRL's fused LM head may bypass the head module: its FLOPs are counted from completion tokens below,
    # which undercounts TRL if it projects every position (in TRL's favour for the FLOP/s figure).
    head_per_row = counter.attach(model, count_head=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = tempfile.mkdtemp(prefix="bench-trl-")
    config = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                       max_steps=args.steps, learning_rate=5e-6, lr_scheduler_type="linear",
                       warmup_steps=math.ceil(0.1 * args.steps),
                       max_length=args.max_length, beta=0.1, precompute_ref_log_probs=precompute,
                       use_cpu=args.device == "cpu",
                       report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, seed=42,
                       dataloader_num_workers=0, max_grad_norm=1.0,
                       # DPOConfig defaults to bf16 autocast and gradient checkpointing; the comparison is
                       # fp32 without recomputation on both sides (bf16 autocast on this CPU is several
                       # times slower than fp32: 65-160 s/step measured).
                       # On a GPU (--precision bf16) both sides run bf16 autocast over fp32 weights.
                       bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False)
    step_seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()
            counter.active = True

        def on_step_end(self, *a, **k):
            counter.active = False
            step_seconds.append(time.perf_counter() - self.start)

    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Timer()])
    init_seconds = time.perf_counter() - start
    train_data = trainer.train_dataset
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    lengths = [2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train_data]
    tokens_per_pair = min(statistics.mean(lengths), 2 * args.max_length)
    completion = statistics.mean(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train_data)
    passes = 3 + (0 if precompute else 1)
    flops = (counter.decoder_flops / len(step_seconds) + head_per_row * completion * args.batch_size) * passes
    efficiency = counter.real_tokens / counter.processed_tokens if counter.processed_tokens else None
    return {"step_seconds": step_seconds, "tokens_per_pair": tokens_per_pair, "peak_rss_mb": peak_memory_mb(args),
            "flops_per_step": flops, "init_seconds": init_seconds, "train_seconds": train_seconds,
            "token_efficiency": efficiency}


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--batch-size",
           str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model, "--attn", args.attn,
           "--device", args.device, "--precision", args.precision, "--rows", args.rows]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"child {name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - start
    return result


def summarize(name: str, runs: list[dict], args, peak: float) -> dict:
    steps = [s for run in runs for s in run["step_seconds"][1:]]  # first step of each run: warm-up
    median = statistics.median(steps)
    pairs = args.batch_size / median
    flops = statistics.mean(run["flops_per_step"] for run in runs)
    return {"name": name, "s_per_step": median, "s_per_step_range": (min(steps), max(steps)),
            "pairs_s": pairs, "tokens_s": pairs * statistics.mean(r["tokens_per_pair"] for r in runs),
            "rss_mb": max(r["peak_rss_mb"] for r in runs), "flops_s": flops / median,
            "token_efficiency": runs[0].get("token_efficiency"),
            "mfu": flops / median / peak, "wall": statistics.mean(r["wall_seconds"] for r in runs)}


def efficiency(value) -> str:
    return f"{value:7.3f}" if value is not None else f"{'-':>7s}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m", help="tiny: a seconds-long smoke check of the script")
    parser.add_argument("--attn", default="", help="prefopt's model.attn_implementation (empty: the model's "
                        "default, sdpa); TRL keeps its default")
    parser.add_argument("--configs", default="trl,prefopt,trl_pre,prefopt_frozen",
                        help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--real-length", action="store_true",
                        help="real UltraFeedback rows of 500-1016 tokens, max_length 1024 (see the docstring)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                        help="default: fp32 on cpu, bf16 autocast over fp32 weights on cuda")
    parser.add_argument("--rows", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")

    if args.child:
        result = {"matmul": lambda: child_matmul(args),
                  "trl": lambda: child_trl(args, precompute=False),
                  "trl_pre": lambda: child_trl(args, precompute=True),
                  "prefopt": lambda: child_prefopt(args, "precomputed", plain=False),
                  "prefopt_frozen": lambda: child_prefopt(args, "frozen", plain=False),
                  "prefopt_plain": lambda: child_prefopt(args, "frozen", plain=True),
                  "prefopt_packed": lambda: child_prefopt(args, "precomputed", plain=False, packing=True),
                  "prefopt_packed_frozen": lambda: child_prefopt(args, "frozen", plain=False, packing=True),
                  }[args.child]()
        print(json.dumps(result))
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    if args.real_length:
        if args.max_length == 128:  # the short-row default: the Zephyr recipe's max_length instead
            args.max_length = 1024
        args.rows = str(Path(tempfile.mkdtemp(prefix="bench-rows-")) / "rows.jsonl")
        n = real_length_rows(args, Path(args.rows))
        print(f"real-length rows: {n} UltraFeedback pairs of 500-1016 tokens -> {args.rows}", flush=True)
    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    print(f"{args.model} {args.precision} {args.device}, {args.steps} steps x {args.batch_size} pairs, max_length "
          f"{args.max_length}, {args.rounds} round(s), {memory}, load average at start {os.getloadavg()[0]:.1f}",
          flush=True)
    results: dict[str, list[dict]] = {n: [] for n in names}
    peaks = []
    for round_index in range(args.rounds):
        peaks.append(run_child("matmul", args)["peak_flops"])
        for name in names:
            result = run_child(name, args)
            if result is None:
                continue
            results[name].append(result)
            steps = ", ".join(f"{s:.2f}" for s in result["step_seconds"])
            print(f"round {round_index + 1} {name:15s} s/step [{steps}]  rss {result['peak_rss_mb']:.0f} MB  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        peaks.append(run_child("matmul", args)["peak_flops"])
    peak = max(peaks)
    print(f"\n{args.precision} matmul peak (best of {len(peaks)} measurements, model-shaped torch.mm): {peak / 1e9:.1f} GFLOP/s "
          f"(all: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
    names = [n for n in names if results[n]]
    rows = {n: summarize(n, results[n], args, peak) for n in names}
    mem = "GPU MB" if args.device == "cuda" else "RSS MB"
    header = f"{'configuration':52s} {'s/step':>7s} {'range':>13s} {'pairs/s':>8s} {'tok/s':>7s} {mem:>7s} " \
             f"{'GFLOP/s':>8s} {'of peak':>7s} {'tok eff':>7s}"
    print(header)
    for n, r in rows.items():
        lo, hi = r["s_per_step_range"]
        print(f"{CONFIGS[n]:52s} {r['s_per_step']:7.2f} {lo:6.2f}-{hi:6.2f} {r['pairs_s']:8.3f} {r['tokens_s']:7.0f} "
              f"{r['rss_mb']:7.0f} {r['flops_s'] / 1e9:8.1f} {r['mfu']:7.2f} {efficiency(r['token_efficiency'])}")
    print()
    for ours in [n for n in names if n.startswith("prefopt")]:
        for theirs in [n for n in names if n.startswith("trl")]:
            a, b = rows[ours], rows[theirs]
            print(f"{ours} vs {theirs}: pairs/s x{a['pairs_s'] / b['pairs_s']:.2f}, "
                  f"peak {'GPU memory' if args.device == 'cuda' else 'RSS'} x{a['rss_mb'] / b['rss_mb']:.2f}")
    for name, runs in results.items():
        if name.startswith("prefopt") and runs:
            refs = [r["reference"] for r in runs]
            print(f"{name}: reference {refs[0]['kind']}, cache {[r.get('cache') for r in refs]}, "
                  f"reference pass s/run {[round(r['reference_seconds'], 2) for r in runs]}")


if __name__ == "__main__":
    main()
