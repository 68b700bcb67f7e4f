"""A user's own benchmark, outside prefopt: answer length in tokens, policy against reference.

    python -m prefopt.train loss_modules=[tests.plugins_example.my_benchmark] benchmark=length model=tiny

No YAML is needed: ``benchmark=length`` is generated from the registration, and every ``benchmark.*`` key
(num_prompts, max_new_tokens, temperature, seed, bootstrap_samples, ...) keeps its schema default unless
overridden. The result lands in summary.json under ``benchmark`` and ``benchmarks.length``.
"""

from prefopt.benchmarks import register_benchmark
from prefopt.data.sentiment import heldout_prompts
from prefopt.generation import SampleSettings, sample
from prefopt.stats import paired_delta


@register_benchmark("length")
def run(policy, reference, tokenizer, bcfg, eot_token=None) -> dict:
    """Completion length in tokens (a verbosity check): the paired delta of policy minus reference."""
    texts = heldout_prompts()
    prompts = [[{"role": "user", "content": t}] for t in texts[: bcfg.num_prompts if bcfg.num_prompts >= 0 else None]]
    settings = SampleSettings(bcfg.max_new_tokens, bcfg.temperature, bcfg.top_p, bcfg.batch_size, bcfg.seed)
    policy_samples = sample(policy, tokenizer, prompts, settings, eot_token)
    reference_samples = sample(reference, tokenizer, prompts, settings, eot_token)
    policy_lengths = [len(s["completion_ids"]) for s in policy_samples]
    reference_lengths = [len(s["completion_ids"]) for s in reference_samples]
    result = {"name": "length", "num_prompts": len(prompts),
              "policy_mean_tokens": sum(policy_lengths) / len(prompts),
              "reference_mean_tokens": sum(reference_lengths) / len(prompts)}
    result.update(paired_delta(policy_lengths, reference_lengths, samples=bcfg.bootstrap_samples, seed=bcfg.seed))
    result["items"] = [{"prompt": p[0]["content"], "policy_tokens": a, "reference_tokens": b}
                       for p, a, b in zip(prompts, policy_lengths, reference_lengths, strict=True)]
    return result
