"""What the trainer hands a loss: scores one collated batch into ``PairLogps`` or ``UnpairedLogps``,
providing exactly the extra inputs the configured losses declare (``LossSpec.required_inputs``).

The trainer never asks which loss it runs; it asks ``required_inputs(terms)`` once and passes the
answer to ``score_batch`` for every batch. Nor does it ask which reference it has: ``check_inputs`` asks
the reference class what it can provide.
"""

from __future__ import annotations

import torch

from prefopt.losses import LossConfigError, PairLogps, UnpairedLogps
from prefopt.scoring.logps import _decoder_and_head


def required_inputs(terms) -> frozenset[str]:
    """Union of the extra inputs (``registry.INPUTS``) of every configured loss term."""
    needs: set[str] = set()
    for term in terms:
        needs |= term.spec.required_inputs(term.hparams)
    return frozenset(needs)


def check_inputs(needs: frozenset[str], batch_size: int, reference) -> None:
    """Fail before training, naming the config key, when the run cannot provide what the losses need.

    ``reference``: the reference class (or instance) of the run; its ``scores_any_sequence`` and
    ``token_logps`` say whether it can score KTO's mismatched pairs and give per-token log-probs."""
    if "kl_pairs" in needs and batch_size < 2:
        raise LossConfigError(
            f"trainer.batch_size={batch_size}: the KL estimate pairs each prompt with another row's completion "
            "in the same micro-batch, so it needs trainer.batch_size >= 2"
        )
    missing = []
    if "kl_pairs" in needs and not reference.scores_any_sequence:
        missing.append("KL pairs of mismatched completions")
    if "ref_tokens" in needs and not reference.token_logps:
        missing.append("per-token log-probs (ld_alpha)")
    if missing:
        raise LossConfigError(
            f"reference={reference.kind} {reference.limitation}, but the loss needs the reference's "
            f"{missing[0]}; use reference=frozen"
        )


def mismatched_batch(batch: dict) -> dict:
    """The KL batch of KTO: row i = (prompt_i, completion_{i-1 mod B}), rebuilt from the collated tensors.

    The same rotation as TRL's KTOTrainer, within the micro-batch: the mismatched completions are the
    batch's own, so the KL term and the rewards are estimated on the same set of outputs.
    """
    ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    n = ids.shape[0]
    lengths = attention.sum(-1).tolist()
    starts = completion.float().argmax(-1).tolist()
    rows = []
    for i in range(n):
        j = (i - 1) % n
        prompt = ids[i, : starts[i]]
        answer = ids[j, starts[j]: lengths[j]]
        rows.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in rows)
    # The pad value is never attended to (right padding, attention 0) nor scored (completion mask 0).
    out_ids = torch.zeros((n, width), dtype=ids.dtype, device=ids.device)
    out_attention = torch.zeros((n, width), dtype=attention.dtype, device=ids.device)
    out_completion = torch.zeros((n, width), dtype=completion.dtype, device=ids.device)
    for i, (prompt, answer) in enumerate(rows):
        p, a = len(prompt), len(answer)
        out_ids[i, :p] = prompt
        out_ids[i, p: p + a] = answer
        out_attention[i, : p + a] = 1
        out_completion[i, p: p + a] = True
    return {"input_ids": out_ids, "attention_mask": out_attention, "completion_mask": out_completion,
            "n_examples": n, "index": batch["index"]}


@torch.no_grad()
def log_sum_sq_probs(model, batch: dict, rows: torch.Tensor) -> torch.Tensor:
    """``log Σ_v π(v | context)²`` at every completion token (WPO's normalizer), ``(N,)``, detached.

    An extra no-grad forward of the policy, run only when a loss asks for ``token_sq_probs``; the token
    order matches ``SequenceScorer(return_tokens=True)`` (row-major over the completion mask).
    """
    target = batch["completion_mask"][:, 1:]
    row_idx, positions = target.nonzero(as_tuple=True)
    if not torch.equal(row_idx, rows):
        raise RuntimeError("token order of the policy scorer and the WPO normalizer differ")
    decoder, head = _decoder_and_head(model)  # the scorer's own lookup: the same positions, the same head
    if decoder is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        selected = logits[:, :-1][row_idx, positions].float()
    else:
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        selected = head(hidden[:, :-1][row_idx, positions]).float()
    log_probs = selected - torch.logsumexp(selected, dim=-1, keepdim=True)
    return torch.logsumexp(2 * log_probs, dim=-1)


def _score(scorer, batch: dict, return_tokens: bool):
    return scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                  return_tokens=return_tokens, n_pairs=batch["n_examples"])


def score_batch(scorer, reference, batch: dict, kind: str, needs: frozenset[str], weights=None):
    """Policy (with grad) and reference (without) log-probs of one collated batch, as the loss input.

    ``kind`` is the collated layout (paired: rows [chosen; rejected]; sft; unpaired); ``needs`` the
    extra inputs of ``required_inputs``. ``scorer`` is the (possibly DDP-wrapped) ``SequenceScorer``.
    ``weights``: ``(B,)``, 0 for the stand-in rows of a multi-process step (see ``UnpairedLogps.weights``).
    """
    policy_tokens = bool(needs & {"policy_tokens", "token_sq_probs"})
    out = _score(scorer, batch if kind == "paired" else {**batch, "n_examples": None}, policy_tokens)
    policy_logps, lengths = out[0], out[1]
    extras: dict[str, torch.Tensor] = {}
    if policy_tokens:
        extras["token_logps"], extras["token_rows"] = out[2], out[3]
    ref = reference.logps(batch if kind == "paired" else {**batch, "n_examples": None},
                          return_tokens="ref_tokens" in needs)
    ref_logps = None if ref is None else ref[0]
    if ref is not None and "ref_tokens" in needs:
        if not torch.equal(ref[3], extras["token_rows"]):
            raise RuntimeError("policy and reference scored different completion tokens")
        extras["ref_token_logps"] = ref[2]
    if "token_sq_probs" in needs:
        policy_model = getattr(scorer, "module", scorer).model  # DDP and DeepSpeed wrap as .module
        extras["token_log_sum_sq_probs"] = log_sum_sq_probs(policy_model, batch, extras["token_rows"])

    if kind == "unpaired":
        kl_policy = kl_ref = None
        if "kl_pairs" in needs:
            kl = mismatched_batch(batch)
            kl["n_examples"] = None
            with torch.no_grad():
                kl_policy = _score(scorer, kl, False)[0]
            kl_ref_out = reference.logps(kl)
            kl_ref = None if kl_ref_out is None else kl_ref_out[0]
        return UnpairedLogps(policy=policy_logps, desirable=batch["desirable"], lengths=lengths, ref=ref_logps,
                             kl_policy=kl_policy, kl_ref=kl_ref, extras=extras, weights=weights)
    n = batch["n_examples"]
    paired = kind == "paired"
    return PairLogps(
        policy_chosen=policy_logps[:n],
        policy_rejected=policy_logps[n:] if paired else None,
        ref_chosen=None if ref_logps is None else ref_logps[:n],
        ref_rejected=None if ref_logps is None or not paired else ref_logps[n:],
        chosen_lengths=lengths[:n],
        rejected_lengths=lengths[n:] if paired else None,
        extras=extras,
    )
