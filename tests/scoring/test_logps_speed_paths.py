"""Every speed path of ``SequenceScorer`` gives the numbers of the plain full-logits implementation.

The plain implementation is ``completion_logps_from_logits``: the model's full ``(rows, T, V)`` logits,
a full log-softmax, a gather at the completion tokens. The speed paths are (a) the head applied only at
completion positions with a logsumexp normalizer and (b) chosen and rejected packed into one row that
runs the prompt once. In float64 every path must agree to 1e-9 (only summation order differs); in
float32 the DPO losses must agree to 1e-5, the issue's bar.
"""

from __future__ import annotations

import copy

import pytest
import torch

from prefopt.data.collate import collate
from prefopt.losses import PairLogps, call, get
from prefopt.scoring.layout import allowed, build_layout
from prefopt.scoring.logps import SequenceScorer, completion_logps_from_logits
from prefopt.trainer.batching import batches, row_length


@pytest.fixture(scope="module")
def tiny_setup():
    from prefopt import data as data_lib
    from prefopt.models import load_model, load_tokenizer
    from tests.conftest import compose

    cfg = compose(["model=tiny"])
    tokenizer = load_tokenizer("tiny")
    rows = data_lib.build_datasets(cfg.dataset, tokenizer, "paired").train
    model = load_model("tiny", "float32")
    return model, tokenizer, rows


def plain(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return completion_logps_from_logits(logits, batch["input_ids"], batch["completion_mask"])


def dpo_losses(policy, ref, n):
    spec = get("dpo")
    logps = PairLogps(policy_chosen=policy[:n], policy_rejected=policy[n:], ref_chosen=ref[:n], ref_rejected=ref[n:])
    return call(spec, logps, spec.make_hparams({"beta": 0.1}), {}).losses


@pytest.mark.parametrize("share_prompt", [False, True])
def test_speed_paths_match_full_logits_in_float64(tiny_setup, share_prompt):
    model, tokenizer, rows = tiny_setup
    model64 = model.to(torch.float64)
    try:
        # Rows of different lengths, so padding and packing both matter.
        chunk = sorted(rows, key=row_length)[::27][:4]
        batch = collate(chunk, tokenizer.pad_token_id, "paired")
        want, want_len = plain(model64, batch)
        got, got_len = SequenceScorer(model64, share_prompt=share_prompt)(
            batch["input_ids"], batch["attention_mask"], batch["completion_mask"], n_pairs=len(chunk))
        assert torch.equal(got_len, want_len)
        assert torch.allclose(got, want, atol=1e-9, rtol=0)
    finally:
        model.to(torch.float32)


def test_packed_gradients_match_plain_in_float64(tiny_setup):
    model, tokenizer, rows = tiny_setup
    model64 = model.to(torch.float64)
    try:
        batch = collate(rows[:3], tokenizer.pad_token_id, "paired")
        grads = []
        for share in (False, True):
            model64.zero_grad()
            logps, _ = SequenceScorer(model64, share_prompt=share)(
                batch["input_ids"], batch["attention_mask"], batch["completion_mask"], n_pairs=3)
            (logps * torch.arange(1, 7, dtype=logps.dtype)).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model64.parameters()]))
        # Same math, other summation order through attention's backward: agreement to 1e-7 of the
        # largest gradient entry (a wrong mask or target shifts them by percents).
        assert float((grads[0] - grads[1]).abs().max()) < 1e-7 * float(grads[0].abs().max())
    finally:
        model.zero_grad()
        model.to(torch.float32)


def test_dpo_losses_match_in_float32(tiny_setup):
    model, tokenizer, rows = tiny_setup
    batch = collate(rows[8:12], tokenizer.pad_token_id, "paired")
    torch.manual_seed(0)
    # A perturbed copy plays the policy so that the DPO margin is not zero.
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    with torch.no_grad():
        want = dpo_losses(plain(policy, batch)[0], plain(model, batch)[0], 4)
        for share in (False, True):
            args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            got = dpo_losses(SequenceScorer(policy, share)(*args, n_pairs=4)[0],
                             SequenceScorer(model, share)(*args, n_pairs=4)[0], 4)
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (share, got, want)
    assert float((want - torch.log(torch.tensor(2.0))).abs().max()) > 1e-3  # the check is not vacuous


def test_packed_tokens_come_back_in_row_order(tiny_setup):
    model, tokenizer, rows = tiny_setup
    batch = collate(rows[:2], tokenizer.pad_token_id, "paired")
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        _, _, tokens_plain, rows_plain = SequenceScorer(model, False)(*args, return_tokens=True, n_pairs=2)
        _, _, tokens_packed, rows_packed = SequenceScorer(model, True)(*args, return_tokens=True, n_pairs=2)
    assert torch.equal(rows_plain, rows_packed)
    assert torch.allclose(tokens_plain, tokens_packed, atol=1e-4)


def test_pack_layout_and_fallbacks(tiny_setup):
    _, tokenizer, rows = tiny_setup
    batch = collate(rows[:2], tokenizer.pad_token_id, "paired")
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    packed = build_layout(*args, 2, packed=False)
    p = len(rows[0]["prompt_ids"])
    c, r = len(rows[0]["chosen_ids"]), len(rows[0]["rejected_ids"])
    assert packed.input_ids[0, : p + c + r].tolist() == rows[0]["prompt_ids"] + rows[0]["chosen_ids"] + rows[0]["rejected_ids"]
    # Rejected positions restart after the prompt; rejected tokens cannot see chosen ones.
    assert packed.position_ids[0, p + c].item() == p
    assert not allowed(packed)[0, p + c, p]
    assert allowed(packed)[0, p + c, p - 1]
    assert packed.targets.numel() == c + r + len(rows[1]["chosen_ids"]) + len(rows[1]["rejected_ids"])
    assert packed.branched
    # Rows that do not share a prompt are laid out unshared (one document each), and so is a non-paired batch.
    mixed = collate([rows[0], rows[1]], tokenizer.pad_token_id, "paired")
    mixed["input_ids"][2] = mixed["input_ids"][3]
    mixed["attention_mask"][2] = mixed["attention_mask"][3]
    mixed["completion_mask"][2] = mixed["completion_mask"][3]
    split = build_layout(mixed["input_ids"], mixed["attention_mask"], mixed["completion_mask"], 2, packed=False)
    assert split.input_ids.shape[0] == 3 and sorted(split.seq.unique().tolist()) == [0, 1, 2, 3]
    sft = collate(rows[:2], tokenizer.pad_token_id, "sft")
    assert not build_layout(sft["input_ids"], sft["attention_mask"], sft["completion_mask"], None, False).branched
    # Left padding is not a layout this module knows: the scorer takes the batch as it is.
    flipped = [t.flip(-1) for t in args]
    assert build_layout(*flipped, 2, packed=True) is None


def test_length_grouping_keeps_rows_and_cuts_padding(tiny_setup):
    _, _, rows = tiny_setup

    def padded(chunks):
        return sum(len(chunk) * max(row_length(r) for r in chunk) for chunk in chunks)

    plain_chunks = list(batches(rows, 4, True, 7))
    grouped = list(batches(rows, 4, True, 7, group_by_length=True))
    assert sorted(r["index"] for c in grouped for r in c) == sorted(r["index"] for r in rows)
    assert padded(grouped) < padded(plain_chunks)
    # Still shuffled: another seed gives another batch order.
    assert [c[0]["index"] for c in grouped] != [c[0]["index"] for c in batches(rows, 4, True, 8, True)]
