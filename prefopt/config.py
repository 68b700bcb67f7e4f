"""The typed schema of a training run, registered with Hydra's ConfigStore, and where the configs live.

``conf/config.yaml`` starts from ``prefopt_schema``, so a typo (``bta=0.1``) or a wrong type
(``epochs=three``) fails at compose time with the full key named. Each loss's hyperparameters are
typed too: ``@register_loss``'s dataclass is stored as ``_loss_schema/<name>`` and every
``conf/loss/<name>.yaml`` builds on it.

One source of defaults. The schema's defaults ARE the defaults: ``python -m prefopt.train`` with no
overrides composes exactly the values below, wherever the schema gives one. ``conf/config.yaml`` and the
default option of each group (the one its defaults list names: ``trainer: default``, ``optimizer: adamw``,
``benchmark: sentiment``, ``loss: dpo`` against its loss dataclass, ...) may restate a schema value, so
that the YAML reads on its own, but may never set a different one: to change a default, change it here
(and in the YAML that restates it). The exceptions, by design:

- a key the schema leaves ``???`` (``model.name_or_path``, ``dataset.name``) is the default option's choice;
- ``dataset.*``: each dataset option describes its own data (lengths, filters, a row cap), and the
  ``DatasetConfig`` values are what a dataset YAML that leaves a key out gets (a user's own dataset);
- free-form dicts (``tags``, ``loss``, ``dataset.options``) have no schema values to disagree with.

Non-default options (``optimizer=rmsprop``, ``experiment=...``) set what they change on purpose.
``tests/test_config_defaults.py`` composes the default and every option and enforces this.

``CONF_DIR`` is the one place that says where the config directory is: ``prefopt/conf`` inside an
installed (non-editable) package, else the checkout's top-level ``conf/`` (a source checkout or an
editable install). pyproject.toml ships ``conf/`` as the package ``prefopt.conf``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from prefopt.losses.adaptive_beta import AdaptiveBetaOptions

log = logging.getLogger("prefopt.config")


def _conf_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged, checkout = here / "conf", here.parent / "conf"
    # An installed wheel has prefopt/conf; a checkout (editable or not) has conf/ beside prefopt/.
    return packaged if (packaged / "config.yaml").is_file() else checkout


# Absolute path of the Hydra config directory (config.yaml and the groups); Hydra's config_path takes it.
CONF_DIR: str = str(_conf_dir())
LOSS_CONF = Path(CONF_DIR) / "loss"


@dataclass
class ModelConfig:
    # Hub id, local directory, or a built-in name (smollm2-135m, tiny).
    name_or_path: str = MISSING
    # The dtype the weights load as: auto = what trainer.precision trains (float32 master weights, also for
    # bf16 autocast on a GPU; bfloat16 only for trainer.precision=pure_bf16). An explicit float32/bfloat16
    # must agree with trainer.precision (prefopt/trainer/precision.py).
    dtype: str = "auto"
    trust_remote_code: bool = False
    # A Jinja chat template to use instead of the tokenizer's; tokenizers without one get Zephyr's.
    chat_template: str | None = None
    # End-of-turn token that closes every completion; null = the tokenizer's eos_token.
    eot_token: str | None = None
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    # LoRA adapters on the policy: null = full fine-tuning; lora=default sets them (and reference=adapter_off).
    lora: LoraConfig | None = None


@dataclass
class DatasetConfig:
    # Registered dataset name (see prefopt.data); decides how rows are parsed.
    name: str = MISSING
    # Hub id or local file/directory; null = the dataset's built-in default.
    path: str | None = None
    train_split: str = "train"
    # null = no separate split: hold out eval_fraction of the train rows instead (also done, with a
    # warning, when path is a single local file and eval_path is null: one file holds one split).
    eval_split: str | None = None
    # Hub id or local file for the eval rows when they live elsewhere than path (e.g. a second jsonl).
    eval_path: str | None = None
    eval_fraction: float = 0.1
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    max_length: int = 512
    max_prompt_length: int = 256
    # Named row filters applied before tokenization (see prefopt.data.filters).
    filters: list[str] = field(default_factory=list)
    # Loader-specific options, passed as keyword arguments to the registered loader.
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # A malformed row (missing key, wrong type, conversation not ending with the assistant):
    # error = stop naming the row and field; skip = drop it, counted as skipped_bad_row in summary.json.
    bad_rows: str = "error"
    # Reuse tokenized rows across runs (a sweep tokenizes once); keyed by tokenizer, chat template,
    # end-of-turn token, lengths and the filtered rows themselves.
    cache: bool = True
    # null = <PREFOPT_CACHE>/tokenized.
    cache_dir: str | None = None
    # Pairs whose chosen and rejected completions are the same text carry no preference: false = paired
    # losses drop them (counted filtered_identical, with a warning; the 'identical' filter is then redundant);
    # true = keep them (counted identical_kept). SFT and unpaired losses are not affected.
    keep_identical: bool = False
    # Controlled label noise, in [0, 1): swap chosen and rejected in round-half-up(label_noise * n) of the n
    # training pairs (never the eval pairs), picked with dataset.seed, so every loss and training seed of a
    # study sees the same noisy pairs; counted label_noise_swapped, the swapped rows' index written to
    # <run dir>/label_noise_rows.json.
    label_noise: float = 0.0
    # uniform: a seeded random subset of the pairs; near_ties: the pairs with the smallest gold score
    # margin |score_chosen - score_rejected| (every training pair must carry both scores).
    label_noise_mode: str = "uniform"


@dataclass
class LoraConfig:
    # LoRA adapters on the policy (peft; prefopt/lora.py): rank, scale numerator (scale = alpha / r), dropout.
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Module names that get adapters; the default covers Llama/Mistral/SmolLM2 attention and MLP.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # null = the base in model.dtype; 4bit = QLoRA: the base in bitsandbytes NF4 (needs CUDA and bitsandbytes).
    quantize: str | None = None
    # <run_dir>/model holds the adapter alone; true also writes the merged full model to <run_dir>/model_merged.
    save_merged: bool = False


@dataclass
class ReferenceConfig:
    # frozen | none | precomputed | checkpoint | adapter_off | sync | bema (see prefopt/reference.py).
    kind: str = "frozen"
    # kind=checkpoint: the reference model's hub id or path; kind=precomputed: optional, else the
    # initial policy is the reference.
    name_or_path: str | None = None
    # kind=precomputed: where cached reference log-probs live; null = $PREFOPT_CACHE/reflogps.
    cache_dir: str | None = None
    # kind=sync (TR-DPO): every sync_steps optimizer steps, ref <- alpha*policy + (1-alpha)*ref.
    sync_alpha: float = 0.6
    sync_steps: int = 16
    # kind=bema (arXiv:2508.00180, TRL's BEMACallback defaults): every bema_update_freq steps after
    # bema_update_after, ref <- EMA_t + alpha_t * (policy - theta_0), with
    # beta_t = max((lag + multiplier*t)^-ema_power, min_ema_multiplier), alpha_t = (lag + multiplier*t)^-bias_power.
    bema_update_freq: int = 400
    bema_ema_power: float = 0.5
    bema_bias_power: float = 0.2
    bema_lag: float = 10.0
    bema_update_after: int = 0
    bema_multiplier: float = 1.0
    bema_min_ema_multiplier: float = 0.0


@dataclass
class BetaScheduleConfig:
    # beta_schedule=linear|cosine: beta moves from start (null = the loss's beta) at step 1 to end at the last step
    # (prefopt/losses/beta_schedule.py).
    kind: str = "linear"
    start: float | None = None
    end: float = MISSING


@dataclass
class OptimizerConfig:
    # adamw | rmsprop
    name: str = "adamw"
    # 1e-5 moves SmolLM2-135M on 64 pairs in 3 epochs; Zephyr-7B used 5e-7 (experiment=zephyr_ddpo). HF's
    # TrainingArguments default (5e-5) and DPOConfig's (1e-6) are tuned for other model and data sizes.
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # Any transformers.get_scheduler schedule but reduce_lr_on_plateau/greedy: linear, cosine,
    # constant_with_warmup, cosine_with_min_lr, ... (constant has no warmup). Warmup rises from 0, as in HF.
    scheduler: str = "linear"
    # HF's lr_scheduler_kwargs, e.g. {num_cycles: 2} for cosine_with_restarts, {min_lr_rate: 0.1}.
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    # HF's default is 0; 0.1 is what the DPO/Zephyr recipes use (alignment-handbook) and what keeps the first
    # steps of a full-lr DPO run from overshooting.
    warmup_ratio: float = 0.1
    # Gradient-norm clipping, HF's default 1.0; 0 disables it (the norm is still logged).
    max_grad_norm: float = 1.0


@dataclass
class TrainerConfig:
    # Pairs (or rows) per device per micro-step.
    batch_size: int = 4
    # Micro-steps per optimizer step: the global batch is batch_size * grad_accum * processes.
    grad_accum: int = 2
    # -1 = run all epochs; otherwise stop after this many optimizer steps.
    max_steps: int = -1
    # Evaluate on held-out pairs every N optimizer steps (0 = only at the end).
    eval_every: int = 0
    eval_batch_size: int = 12
    log_every: int = 1
    save_model: bool = True
    progress_bar: bool = True
    # Batch pairs of similar length (shuffled within windows of 50 batches, then the batches shuffled)
    # to cut padding; the set of pairs per epoch is unchanged. false = plain shuffled order.
    group_by_length: bool = True
    # Run each pair's prompt once for chosen and rejected (packed rows, block attention mask).
    share_prompt: bool = True
    # Padding-free batches: every sequence (or shared-prompt pair) of a micro-batch in one row, position ids
    # restarting per sequence, attention confined to each (prefopt/scoring/layout.py). Pays off where the
    # kernel skips masked blocks (model.attn_implementation=flex_attention or flash_attention_2 on a GPU); with
    # sdpa/eager (CPU) the mask is dense over the whole batch's tokens, so attention does more work, not less.
    packing: bool = False
    # Above this many completion tokens in one forward, the vocabulary projection and its log-sum-exp run over
    # chunks of this many tokens (prefopt/scoring/logps.py), so memory no longer grows with tokens x vocabulary
    # (SmolLM2: 4096 tokens of float32 logits are 0.8 GB). At or below it the unchunked path runs unchanged;
    # the default keeps short-row runs bit-identical. Real-length runs: 256-1024.
    logps_chunk_rows: int = 4096
    # auto | fp32 | bf16_autocast | pure_bf16 (prefopt/trainer/precision.py). auto = bf16_autocast on a
    # bf16-capable GPU (float32 master weights and AdamW states, bf16 autocast), fp32 on CPU; pure_bf16 keeps
    # weights and optimizer states in bf16, where updates below bf16's spacing (lr 5e-7 on weights ~0.02) are lost.
    # It decides accelerate's mixed_precision; an accelerate config file's value is ignored.
    precision: str = "auto"
    # Write a resumable checkpoint (model, optimizer, scheduler, RNG, data position, metrics offset) every
    # N optimizer steps into <run_dir>/checkpoints/; 0 = none.
    checkpoint_every: int = 0
    # Keep only the newest N checkpoints (0 = keep all).
    keep_last: int = 2
    # A NaN/inf loss or gradient: stop (clear error, last good checkpoint kept) | skip (drop that update,
    # counted in skipped_steps).
    on_nonfinite: str = "stop"


@dataclass
class JudgeConfig:
    # http: an OpenAI-compatible endpoint; local: a Hugging Face chat model; none: no judge.
    kind: str = "none"
    # http: the API root, e.g. https://api.openai.com/v1 (…/chat/completions is appended).
    base_url: str | None = None
    # http: the served model name; local: a hub id, a path, or smollm2-135m / tiny.
    model: str | None = None
    # http: the environment variable holding the API key (the key itself is never in a config).
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    # Transport retries (timeouts, 429, 5xx) with exponential backoff.
    max_retries: int = 5
    # 0 = unlimited; otherwise requests are spaced evenly to stay under this rate.
    requests_per_minute: float = 0.0
    temperature: float = 0.0
    max_tokens: int = 1024
    # A reply that does not parse is asked again this many times, then counted as malformed.
    parse_retries: int = 2
    # http: requests in flight at once (requests_per_minute still spaces their starts); local: always 1.
    concurrency: int = 8
    # null = $PREFOPT_CACHE/judgments; every reply is cached there, keyed by judge and prompt.
    cache_dir: str | None = None


@dataclass
class BenchmarkConfig:
    # Generation benchmark run at the end of training (and by prefopt.evaluate):
    # none | sentiment | mt_bench | alpaca_eval | alpaca_eval_pairwise (see prefopt/benchmarks).
    name: str = "sentiment"
    # sentiment: builtin (the packaged held-out prompts), imdb (hub stanfordnlp/imdb, test split, as in the
    # DPO paper), or a JSON/JSONL/Parquet path or hub id (its test split) with a prompt column, or with a
    # text column (IMDb reviews: the first prefix_words words become the prompt).
    # mt_bench: FastChat's question.jsonl or hub HuggingFaceH4/mt_bench_prompts; alpaca_eval(_pairwise): an
    # AlpacaEval outputs JSON, or hub tatsu-lab/alpaca_eval[/<file>] (prefopt/benchmarks/alpaca_data.py).
    prompts: str = "builtin"
    # How many prompts/questions/instructions (from the top); -1 = all.
    num_prompts: int = 48
    max_new_tokens: int = 40
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 24
    # The sampling seed: sample j of prompt i is drawn from a stream seeded by (seed, i, j), never by the
    # training seed, so every run of a study samples each prompt alike and runs pair prompt by prompt.
    seed: int = 0
    # sentiment: completions per prompt (policy and reference each); CIs resample prompts, not samples.
    samples_per_prompt: int = 1
    # sentiment: read the reference's samples and scores from $PREFOPT_CACHE/refsamples when an earlier run
    # with the same reference, prompts and sampling settings made them (a study generates them once).
    cache_reference: bool = True
    bootstrap_samples: int = 10000
    # sentiment with review-text prompts: words of each review kept as the prefix to continue.
    prefix_words: int = 8
    # mt_bench: FastChat's judge_prompts.jsonl and reference_answer/gpt-4.jsonl.
    judge_prompts: str | None = None
    reference_answers: str | None = None
    # alpaca_eval(_pairwise): the reference output set the win rate is computed against (as prompts).
    reference_outputs: str | None = None
    # alpaca_eval: the alpaca_eval package's annotator config (a name in its evaluators_configs/, or a
    # configs.yaml path); the default is the AlpacaEval 2 leaderboard's.
    annotator: str = "weighted_alpaca_eval_gpt4_turbo"
    # alpaca_eval: a local copy of the hub's tatsu-lab/alpaca_eval df_gamed.csv, which the LC win rate needs;
    # null = download it (offline without a copy: raw win rate only, said in one line before judging).
    lc_difficulties: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class LoggerConfig:
    # metrics.jsonl is always written; the name adds one tracker: jsonl (none), wandb, tensorboard, mlflow, or
    # accelerate (any tracker accelerate supports, named by tracker). See prefopt/sinks.py, docs/tracking.md.
    name: str = "jsonl"
    # logger=accelerate: accelerate's tracker name (aim, comet_ml, clearml, dvclive, swanlab, trackio, ...).
    tracker: str | None = None
    # W&B project; the MLflow experiment and other trackers' project outside a sweep.
    project: str = "prefopt"
    entity: str | None = None
    # null = in a multirun, the sweep directory (one W&B group / MLflow experiment per sweep); else none.
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # wandb: auto = online with an API key (WANDB_API_KEY or ~/.netrc), offline otherwise, so it never blocks.
    mode: str = "auto"
    # Trackers that keep files (tensorboard, aim, ...): null = <run_dir>/<tracker>, a sweep's
    # <sweep dir>/<tracker>/<job>.
    log_dir: str | None = None
    # mlflow: null = a local file store, mlruns/ in the run (or sweep) directory; or an MLflow server URI.
    tracking_uri: str | None = None
    # Keyword arguments for the tracker's class (accelerate's init_kwargs for that tracker).
    init_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class HubConfig:
    # Push <run_dir>/model (weights, tokenizer, model card) to the Hugging Face Hub after training. Checked
    # before any model loads: a missing repo_id or token, or HF_HUB_OFFLINE=1, stops the run up front.
    push: bool = False
    # user/name or org/name; created if absent.
    repo_id: str | None = None
    # null = the Hub's default for the account (public), as HF's hub_private_repo.
    private: bool | None = None
    # The environment variable holding the token; when unset, the token `hf auth login` saved.
    token_env: str = "HF_TOKEN"


@dataclass
class RegimeConfig:
    # offline: train on the dataset's pairs; online: fresh pairs from the policy's samples at every step
    # (prefopt/online/online.py); iterative / spin: rounds of sampling from the policy, labelling (or, for spin,
    # the dataset's response vs the policy's sample) and training (prefopt/online/rounds.py).
    kind: str = "offline"
    # online: the sampling copy of the policy is refreshed every `every` steps (1 = the policy itself).
    every: int = 1
    rounds: int = 3
    epochs_per_round: int = 1
    # k completions sampled per training prompt per round (spin: always 1).
    samples_per_prompt: int = 4
    # best_vs_worst | random | all_pairs (prefopt/online/pairs.py); |score difference| <= tie_margin is a tie.
    pairs: str = "best_vs_worst"
    tie_margin: float = 0.0
    # reset: each round's reference is the policy it starts from; initial: the run's first model throughout.
    reference: str = "reset"
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    sample_batch_size: int = 16
    # Seeds the sampling streams (with the round, prompt and sample numbers) and the random pair choice;
    # null = the training seed, so that `seed=1,2,3` varies the policy's samples too (a fixed value shares them).
    seed: int | None = None


@dataclass
class LabellerConfig:
    # none | gold | judge | reward_model, or a plug-in's name (prefopt/labellers/).
    name: str = "none"
    # gold: the benchmark whose ground-truth scorer labels (null = the run's benchmark).
    benchmark: str | None = None
    # judge: the judge (same keys as benchmark.judge) and whether it grades each sample or compares two.
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    judge_mode: str = "pairwise"
    # reward_model: a local *ForSequenceClassification directory or hub id, and the logit used as the score.
    path: str | None = None
    label_index: int = 0
    batch_size: int = 8


@dataclass
class PrefoptConfig:
    # The loss strength β, shared by every loss config through ${beta}.
    beta: float = 0.1
    # Passes over the training pairs.
    epochs: int = 3
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # name -> hyperparameters; more than one entry is a weighted combination (loss=[dpo,sft]).
    loss: dict[str, Any] = field(default_factory=dict)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # Free-form labels copied into summary.json (e.g. the variant's name), for analysis tables.
    tags: dict[str, Any] = field(default_factory=dict)
    # Python modules to import before training so that their @register_loss plug-ins exist.
    loss_modules: list[str] = field(default_factory=list)
    # null = Hydra's output directory.
    run_dir: str | None = None
    # null = a fresh run (an error if run_dir already holds one); auto = continue from the newest checkpoint
    # in run_dir (a fresh start if there is none yet); or a checkpoint / run directory path.
    resume: str | None = None
    # Metric sinks: metrics.jsonl (always) and logger=wandb|tensorboard|mlflow|accelerate (one tracker).
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # hub.push=true hub.repo_id=user/name: push the saved model and its card to the Hub after training.
    hub: HubConfig = field(default_factory=HubConfig)
    # regime=offline|iterative|spin and the labeller that turns samples into pairs (labeller=gold|judge|...).
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    labeller: LabellerConfig = field(default_factory=LabellerConfig)
    # A DeepSpeed config (deepspeed=zero2|zero3, conf/deepspeed/); null = plain DDP / single process.
    deepspeed: Any = None
    # β modifiers of every paired loss with a beta (null = off): adaptive_beta=beta_dpo is β-DPO's dynamic β and
    # filtering (its schema and defaults: AdaptiveBetaOptions in prefopt/losses/adaptive_beta.py); beta_schedule=
    # linear|cosine anneals beta over the optimizer steps.
    adaptive_beta: AdaptiveBetaOptions | None = None
    beta_schedule: BetaScheduleConfig | None = None
    # What the Hydra main returns to a sweeper (hparams_search=...): a dotted path into summary.json such as
    # benchmark.delta; null = eval.eval/loss. See prefopt/objective.py.
    optimized_metric: str | None = None
    # Reward at a KL budget: a run whose benchmark KL estimate exceeds the budget returns
    # metric - optimized_metric_kl_penalty * (KL - budget); null = no budget.
    optimized_metric_kl_budget: float | None = None
    optimized_metric_kl_penalty: float = 1.0


def register_configs(plugin_modules: list[str] | None = None) -> None:
    """Store the run schema and one typed schema per registered loss in Hydra's ConfigStore.

    Loss plug-ins are imported first: ``plugin_modules``, or else the modules named by ``loss_modules=``
    on the command line (or the comma-separated ``PREFOPT_LOSS_MODULES``), because Hydra composes
    ``loss=<name>`` before the run starts. A loss without a ``conf/loss/<name>.yaml`` (a plug-in) gets a
    generated option: its hyperparameter defaults, ``beta: ${beta}`` and ``weight: 1.0``.
    """
    from prefopt import losses

    modules = plugin_modules if plugin_modules is not None else plugin_modules_from_argv(sys.argv[1:])
    try:
        losses.load_plugins(modules)
    except losses.LossConfigError as err:
        # Reported again, as a one-line error, when the run builds its losses.
        log.warning("%s", err)
    cs = ConfigStore.instance()
    cs.store(name="prefopt_schema", node=PrefoptConfig)
    for name in losses.names():
        spec = losses.get(name)
        schema = _with_weight(spec.hparams)
        # Kept out of the loss group so that Hydra's "Available options in 'loss'" lists only losses.
        cs.store(group="_loss_schema", name=name, node=schema)
        if not (LOSS_CONF / f"{name}.yaml").exists():
            entry = OmegaConf.structured(schema)
            if "beta" in entry:
                entry.beta = "${beta}"
            cs.store(group="loss", name=name, node=entry, package=f"loss.{name}")


def plugin_modules_from_argv(argv: list[str]) -> list[str]:
    """``loss_modules=[a,b]`` / ``+loss_modules=a`` on the command line, plus ``PREFOPT_LOSS_MODULES``."""
    modules = [m for m in os.environ.get("PREFOPT_LOSS_MODULES", "").split(",") if m.strip()]
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "loss_modules" and value:
            modules += [m.strip(" '\"") for m in value.strip("[]").split(",") if m.strip(" '\"")]
    return modules


def _with_weight(hparams: type) -> type:
    # Every loss entry carries its weight in a combination; the loss function never sees it.
    fields = [(f.name, f.type, f) for f in dataclasses.fields(hparams)]
    fields.append(("weight", float, field(default=1.0)))
    return dataclasses.make_dataclass(f"{hparams.__name__}Entry", fields)
