"""End-to-end parity with TRL 1.16's DPOTrainer: one optimizer step on the same tiny model, the same
conversational rows and the same batch gives the same loss, rewards/* and logps/* within 1e-4, and the
same updated weights.

The one deliberate difference is tokenization, pinned here explicitly: TRL renders prompt + completion
through the chat template and keeps everything after the prompt, so with ChatML the completion ends in
``<|im_end|>`` followed by the template's trailing ``"\\n"`` token; prefopt cuts the completion right after
``<|im_end|>`` (generation stops there, so the newline is never produced and is not trained on). Prompt
ids are identical. So the step comparison scores TRL's own token ids through prefopt's collate, scorer,
reference and loss, and a second check shows that with prefopt's ids the numbers differ by exactly the
newline token's log-probs.

The reference is the tiny model with perturbed weights (given to both trainers), so that at the first
step the rewards and the loss are not trivially 0 and log 2, as they would be with policy = reference.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is a test-only dependency (pip install -e .[test])")

from prefopt import losses  # noqa: E402
from prefopt.data.collate import collate  # noqa: E402
from prefopt.data.tokenize import EncodeSettings, encode_rows  # noqa: E402
from prefopt.models import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from prefopt.reference import FrozenReference  # noqa: E402
from prefopt.scoring import score_batch  # noqa: E402
from prefopt.scoring.logps import SequenceScorer  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "prefopt" / "assets" / "sentiment_pairs.jsonl"
BETA, LR, N = 0.1, 1e-4, 4


def conversational_rows():
    rows = [json.loads(line) for line in ASSETS.read_text().splitlines()[:N]]
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def perturbed_reference():
    model = load_model("tiny", "float32")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def trl_step(tmp_path_factory):
    """TRL's DPOTrainer, one step over all N rows in one batch; returns its loss, logs, tokenized rows
    and the model after the step."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    path = resolve_model_path("tiny")
    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny", "float32")
    initial = copy.deepcopy(model.state_dict())
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=N, max_steps=1,
                     learning_rate=LR, lr_scheduler_type="constant", beta=BETA, loss_type=["sigmoid"],
                     report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
                     max_grad_norm=1.0, weight_decay=0.0, seed=0, max_length=None, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=perturbed_reference(), args=args,
                         train_dataset=Dataset.from_list(conversational_rows()), processing_class=tokenizer)
    losses_seen = []
    compute_loss = trainer.compute_loss

    def spy(*a, **k):  # the exact (unrounded) loss of the step; Trainer's log rounds it to 4 decimals
        out = compute_loss(*a, **k)
        losses_seen.append(float(out.detach()))
        return out

    trainer.compute_loss = spy
    trainer.train()
    logs = trainer.state.log_history[0]
    tokenized = [dict(trainer.train_dataset[i]) for i in range(N)]
    return dict(loss=losses_seen[0], logs=logs, tokenized=tokenized, path=path, initial=initial,
                after={k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def prefopt_step(rows, initial):
    """prefopt's pieces as the trainer wires them: collate, SequenceScorer, frozen Reference, score_batch,
    the dpo loss, clip to norm 1, AdamW."""
    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny", "float32")
    model.load_state_dict(initial)
    reference = FrozenReference(perturbed_reference())
    scorer = SequenceScorer(model)
    scorer.train()
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=LR, weight_decay=0.0)
    batch = collate(rows, tokenizer.pad_token_id, "paired")
    spec = losses.get("dpo")
    logps = score_batch(scorer, reference, batch, "paired", frozenset())
    out = losses.call(spec, logps, spec.make_hparams({"beta": BETA}))
    loss = out.losses.mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
    optimizer.step()
    metrics = {k: float(v.mean()) for k, v in out.metrics.items()}
    return float(loss.detach()), metrics, float(grad_norm), model.state_dict(), logps


def prefopt_rows():
    tokenizer = load_tokenizer("tiny")
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"][0]["content"], "rejected": r["rejected"][0]["content"]}
            for r in conversational_rows()]
    return encode_rows(rows, tokenizer, EncodeSettings(max_length=4096, max_prompt_length=2048), "paired")


def test_tokenization_difference_is_exactly_the_trailing_newline(trl_step):
    tokenizer = load_tokenizer("tiny")
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    for ours, theirs in zip(prefopt_rows(), trl_step["tokenized"], strict=True):
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        for key in ("chosen_ids", "rejected_ids"):
            assert theirs[key] == ours[key] + newline
            assert ours[key][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_one_step_matches_trl(trl_step):
    rows = [{"index": i, **{k: t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}}
            for i, t in enumerate(trl_step["tokenized"])]
    loss, metrics, grad_norm, after, _ = prefopt_step(rows, trl_step["initial"])
    logs = trl_step["logs"]
    assert loss == pytest.approx(trl_step["loss"], abs=1e-4)
    assert abs(loss - 0.6931472) > 1e-2 and abs(metrics["rewards/margins"]) > 1e-2  # not the trivial step
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert metrics[key] == pytest.approx(logs[key], abs=1e-4), key
    assert grad_norm == pytest.approx(logs["grad_norm"], rel=1e-3)
    # Same update: AdamW's first step is ≈ lr·sign(g), so the weights agree to well within 2·lr.
    worst = max(float((after[k] - trl_step["after"][k]).abs().max()) for k in after)
    moved = max(float((after[k] - trl_step["initial"][k]).abs().max()) for k in after)
    assert moved > 0.5 * LR and worst < 1e-5


def test_with_prefopt_tokenization_the_difference_is_the_newline_token(trl_step):
    """Scoring prefopt's own ids gives logps that differ from TRL's by the newline token's log-prob only:
    here we check the per-sequence sums equal TRL's minus that one token's log-prob under the same model."""
    ours = prefopt_rows()
    theirs = [{"index": i, **{k: t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}}
              for i, t in enumerate(trl_step["tokenized"])]
    model = load_model("tiny", "float32")
    model.load_state_dict(trl_step["initial"])
    scorer = SequenceScorer(model).eval()
    tokenizer = load_tokenizer("tiny")
    with torch.no_grad():
        batch_ours = collate(ours, tokenizer.pad_token_id, "paired")
        batch_theirs = collate(theirs, tokenizer.pad_token_id, "paired")
        logps_ours, len_ours = scorer(batch_ours["input_ids"], batch_ours["attention_mask"],
                                      batch_ours["completion_mask"])
        logps_theirs, len_theirs, tokens, rows = scorer(batch_theirs["input_ids"], batch_theirs["attention_mask"],
                                                        batch_theirs["completion_mask"], return_tokens=True)
    assert torch.equal(len_theirs, len_ours + 1)
    last = torch.cumsum(torch.bincount(rows), 0) - 1  # each row's final scored token: the newline
    assert torch.allclose(logps_theirs - tokens[last], logps_ours, atol=1e-4)
