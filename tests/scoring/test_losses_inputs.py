"""The extra inputs the trainer provides when a loss declares them: KTO's mismatched pairs, WPO's
per-token Σπ², LD-DPO's per-token log-probs, checked on the tiny model against full-logit references."""

from __future__ import annotations

import pytest
import torch

from prefopt import losses
from prefopt.data.collate import collate
from prefopt.models import load_model
from prefopt.reference import FrozenReference, PrecomputedReference
from prefopt.scoring import check_inputs, score_batch
from prefopt.scoring.inputs import log_sum_sq_probs, mismatched_batch
from prefopt.scoring.logps import SequenceScorer, completion_logps_from_logits

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("tiny", "float32").eval()


def unpaired_rows():
    return [
        {"index": 0, "prompt_ids": [5, 6, 7], "completion_ids": [8, 9], "desirable": True},
        {"index": 1, "prompt_ids": [10, 11], "completion_ids": [12, 13, 14, 15], "desirable": False},
        {"index": 2, "prompt_ids": [16], "completion_ids": [17], "desirable": True},
    ]


def test_mismatched_batch_rotates_completions_by_one():
    """Row i pairs prompt i with completion i-1 (mod B), as TRL's KTOTrainer: (x0,y2), (x1,y0), (x2,y1)."""
    kl = mismatched_batch(collate(unpaired_rows(), PAD, "unpaired"))
    expected = [[5, 6, 7, 17], [10, 11, 8, 9], [16, 12, 13, 14, 15]]
    for row, ids in enumerate(expected):
        n = int(kl["attention_mask"][row].sum())
        assert kl["input_ids"][row, :n].tolist() == ids
        start = int(kl["completion_mask"][row].float().argmax())
        assert start == len(unpaired_rows()[row]["prompt_ids"])
        assert int(kl["completion_mask"][row].sum()) == len(ids) - start


def test_wpo_normalizer_matches_full_logits(model):
    batch = collate([{"index": 0, "prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 2], "rejected_ids": [10, 2]},
                     {"index": 1, "prompt_ids": [11, 12], "chosen_ids": [13, 2], "rejected_ids": [14, 15, 16, 2]}],
                    PAD, "paired")
    rows = batch["completion_mask"][:, 1:].nonzero(as_tuple=True)[0]
    got = log_sum_sq_probs(model, batch, rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["completion_mask"][:, 1:]
    expected = torch.logsumexp(2 * torch.log_softmax(logits[mask], -1), -1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_score_batch_provides_what_is_declared(model):
    rows = [{"index": 0, "prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 2], "rejected_ids": [10, 2]},
            {"index": 1, "prompt_ids": [11, 12], "chosen_ids": [13, 2], "rejected_ids": [14, 15, 16, 2]}]
    batch = collate(rows, PAD, "paired")
    scorer, reference = SequenceScorer(model), FrozenReference(load_model("tiny", "float32"))
    plain = score_batch(scorer, reference, batch, "paired", frozenset())
    assert plain.extras == {}
    hp = losses.get("dpo").make_hparams({"ld_alpha": 0.5, "wpo": True})
    needs = losses.get("dpo").required_inputs(hp)
    assert needs == {"policy_tokens", "ref_tokens", "token_sq_probs"}
    full = score_batch(scorer, reference, batch, "paired", needs)
    assert set(full.extras) == {"token_logps", "token_rows", "ref_token_logps", "token_log_sum_sq_probs"}
    logps, _ = completion_logps_from_logits(model(input_ids=batch["input_ids"]).logits, batch["input_ids"],
                                            batch["completion_mask"])
    assert torch.allclose(full.policy_chosen, logps[:2], atol=1e-4)
    assert torch.allclose(torch.zeros(4).index_add(0, full.extras["token_rows"], full.extras["token_logps"]),
                          logps, atol=1e-4)
    out = losses.call(losses.get("dpo"), full, hp)
    assert torch.isfinite(out.losses).all()


def test_unpaired_score_batch_has_kl_pairs(model):
    batch = collate(unpaired_rows(), PAD, "unpaired")
    scorer, reference = SequenceScorer(model), FrozenReference(load_model("tiny", "float32"))
    logps = score_batch(scorer, reference, batch, "unpaired", frozenset({"kl_pairs"}))
    assert logps.kl_policy.shape == (3,) and not logps.kl_policy.requires_grad
    # Same weights for policy and reference here, so the KL estimate is exactly zero.
    assert torch.allclose(logps.kl_policy, logps.kl_ref, atol=1e-5)
    assert logps.desirable.tolist() == [True, False, True]


def test_check_inputs_names_the_config_key():
    with pytest.raises(losses.LossConfigError, match="trainer.batch_size=1"):
        check_inputs(frozenset({"kl_pairs"}), 1, FrozenReference)
    with pytest.raises(losses.LossConfigError, match="reference=precomputed"):
        check_inputs(frozenset({"ref_tokens"}), 4, PrecomputedReference)
    check_inputs(frozenset({"policy_tokens"}), 1, PrecomputedReference)


def _all_reduce_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from prefopt.losses.common import global_sum_count

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Rank 1's last row is a stand-in (weight 0) of the kind a rank gets when its slice of a step runs out.
    values = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0, 5.0, 100.0])
    weights = torch.ones(2) if rank == 0 else torch.tensor([1.0, 1.0, 1.0, 0.0])
    common = dict(policy_logps=values, ref_logps=torch.zeros_like(values),
                  desirable=torch.ones_like(values, dtype=torch.bool), lengths=torch.ones(len(values)),
                  weights=weights)
    out = losses.compute("kto", **common, kl_policy_logps=values, kl_ref_logps=torch.zeros_like(values), beta=0.1)
    state: dict = {}
    losses.compute("bco", **common, state=state, beta=1.0)
    queue.put((rank, global_sum_count(values, weights), float(out.metrics["kl"]), state["delta"], state["count"]))
    dist.destroy_process_group()


def test_kl_and_baseline_statistics_span_all_processes():
    """Two gloo processes with rows [1, 2] and [3, 4, 5] (+ a stand-in 100 of weight 0): both see Σ = 15 over
    5 rows, KTO's KL estimate 3 and BCO's reward baseline δ = mean(r) = 3 over 5 rows."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_all_reduce_worker, args=(rank, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert [r[1] for r in results] == [(15.0, 5), (15.0, 5)]
    assert [r[2] for r in results] == pytest.approx([3.0, 3.0])
    assert [r[3] for r in results] == pytest.approx([3.0, 3.0]) and [r[4] for r in results] == [5, 5]
