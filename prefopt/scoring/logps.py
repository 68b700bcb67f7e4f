"""Per-sequence log-probabilities of completions.

``SequenceScorer`` wraps a causal LM so that one forward returns, for each row, the sum of the
log-probs of its completion tokens (prompt and padding masked) and the number of those tokens. Three
things make it cheaper than the textbook ``log_softmax(model(x).logits)`` while giving the same numbers
(``tests/scoring/test_logps_speed_paths.py`` checks each against ``completion_logps_from_logits`` to 1e-5):

- **Head only where it is needed.** The decoder runs once; the vocabulary projection is applied only at
  the positions that predict a completion token, and the log-normalizer is a ``logsumexp`` over those
  rows. Neither the prompt's logits nor a full ``(rows, length, vocab)`` log-softmax is ever built; for
  SmolLM2 (vocab 49,152) the head is a fifth of the model's FLOPs per token.
- **Prompt shared by chosen and rejected** (``share_prompt``). A pair is packed into one row
  ``[prompt, chosen, rejected]`` with a block attention mask (rejected tokens never see chosen ones) and
  position ids that restart after the prompt, so the prompt is run once instead of twice. The last
  prompt position predicts the first token of both completions. Padding queries attend to themselves
  only, so no softmax row is empty (an all-masked row would put NaN into the backward).
- Models whose head does more than a linear map (logit soft-capping, logit scaling) take the plain
  full-logits path, unpacked.

Being an ``nn.Module`` whose ``forward`` does all of this, it is what ``accelerate.prepare`` wraps, so
DDP/DeepSpeed hooks see every parameter use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _needs_full_logits(model) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


def _decoder_and_head(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", None)
    if head is None or decoder is None or _needs_full_logits(inner):
        return None, None
    return decoder, head


def completion_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor):
    """Reference implementation over full logits ``(rows, T, V)``; used for parity tests and fallback."""
    target_mask = completion_mask[:, 1:]
    targets = input_ids[:, 1:]
    token_logps = torch.log_softmax(_at_least_fp32(logits[:, :-1]), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * target_mask).sum(-1), target_mask.sum(-1)


@dataclass
class PackedPairs:
    """``B`` pairs as ``B`` rows ``[prompt, chosen, rejected]``.

    ``pred_row``/``pred_pos`` index the hidden states that predict each scored token, ``targets`` are
    those tokens, ``seq`` the original row (``i`` chosen, ``B + i`` rejected) each one belongs to.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor  # (B, 1, L, L) additive float mask
    pred_row: torch.Tensor
    pred_pos: torch.Tensor
    targets: torch.Tensor
    seq: torch.Tensor


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
               n_pairs: int, dtype: torch.dtype) -> PackedPairs | None:
    """Pack the collated paired batch (rows ``[chosen_0..B-1, rejected_0..B-1]``, right-padded) so that
    each prompt is run once. Returns ``None`` when the batch is not packable (a pair whose rows do not
    share their prompt, or an empty prompt), and the caller scores it unpacked."""
    if input_ids.shape[0] != 2 * n_pairs:
        return None
    lengths = attention_mask.sum(-1).tolist()
    has_completion = completion_mask.any(-1)
    if not bool(has_completion.all()):
        return None
    starts = completion_mask.float().argmax(-1).tolist()  # first completion position = prompt length
    ids = input_ids.tolist()
    rows, pred_row, pred_pos, targets, seq = [], [], [], [], []
    for i in range(n_pairs):
        p = starts[i]
        if p == 0 or starts[n_pairs + i] != p or ids[i][:p] != ids[n_pairs + i][:p]:
            return None
        chosen = ids[i][p:lengths[i]]
        rejected = ids[n_pairs + i][p:lengths[n_pairs + i]]
        rows.append((ids[i][:p], chosen, rejected))
        c = len(chosen)
        for j, token in enumerate(chosen):
            pred_row.append(i)
            pred_pos.append(p + j - 1)
            targets.append(token)
            seq.append(i)
        for j, token in enumerate(rejected):
            pred_row.append(i)
            pred_pos.append(p - 1 if j == 0 else p + c + j - 1)
            targets.append(token)
            seq.append(n_pairs + i)
    width = max(len(p) + len(c) + len(r) for p, c, r in rows)
    device = input_ids.device
    packed = torch.full((n_pairs, width), int(input_ids[0, -1]), dtype=input_ids.dtype)
    positions = torch.zeros((n_pairs, width), dtype=torch.long)
    allowed = torch.zeros((n_pairs, width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for i, (prompt, chosen, rejected) in enumerate(rows):
        p, c, r = len(prompt), len(chosen), len(rejected)
        total = p + c + r
        packed[i, :total] = torch.tensor(prompt + chosen + rejected, dtype=input_ids.dtype)
        positions[i, :p + c] = torch.arange(p + c)
        positions[i, p + c:total] = torch.arange(p, p + r)
        positions[i, total:] = torch.arange(width - total)  # padding: any valid position
        block = causal[:total, :total].clone()
        block[p + c:, p:p + c] = False  # rejected never sees chosen
        allowed[i, :total, :total] = block
        pad = torch.arange(total, width)
        allowed[i, pad, pad] = True  # padding attends to itself: no empty softmax row
    mask = torch.zeros((n_pairs, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    as_long = dict(dtype=torch.long, device=device)
    return PackedPairs(
        input_ids=packed.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
        pred_row=torch.tensor(pred_row, **as_long), pred_pos=torch.tensor(pred_pos, **as_long),
        targets=torch.tensor(targets, **as_long), seq=torch.tensor(seq, **as_long),
    )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits lose the log-normalizer's precision; float64 (parity tests) stays float64.
    return t if t.dtype == torch.float64 else t.float()


def _token_logps(selected: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    selected = _at_least_fp32(selected)
    return selected.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(selected, dim=-1)


class SequenceScorer(nn.Module):
    """``share_prompt``: pack paired batches so each prompt is run once (see the module docstring)."""

    def __init__(self, model: nn.Module, share_prompt: bool = False):
        super().__init__()
        self.model = model
        self.share_prompt = share_prompt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                return_tokens: bool = False, n_pairs: int | None = None):
        """Returns ``(logps, lengths)``, each ``(rows,)``; with ``return_tokens`` also the per-token
        log-probs ``(N,)`` of the N completion tokens and their row indices ``(N,)``.

        ``n_pairs``: the batch is ``n_pairs`` chosen rows followed by their rejected rows; with
        ``share_prompt`` such a batch is scored packed."""
        decoder, head = _decoder_and_head(self.model)
        lengths = completion_mask[:, 1:].sum(-1)
        rows_out = input_ids.shape[0]
        packed = None
        if self.share_prompt and n_pairs and decoder is not None:
            dtype = head.weight.dtype if head.weight.is_floating_point() else torch.float32
            packed = pack_pairs(input_ids, attention_mask, completion_mask, n_pairs, dtype)
        if packed is not None:
            hidden = decoder(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                             position_ids=packed.position_ids).last_hidden_state
            token_logps = _token_logps(head(hidden[packed.pred_row, packed.pred_pos]), packed.targets)
            rows = packed.seq
        else:
            target_mask = completion_mask[:, 1:]
            rows, positions = target_mask.nonzero(as_tuple=True)
            targets = input_ids[:, 1:][rows, positions]
            if decoder is None:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
                selected = logits[:, :-1][rows, positions]
            else:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                selected = head(hidden[:, :-1][rows, positions])
            token_logps = _token_logps(selected, targets)
        logps = torch.zeros(rows_out, dtype=token_logps.dtype, device=token_logps.device)
        logps = logps.index_add(0, rows, token_logps)
        if return_tokens:
            if packed is not None:
                # Each row's tokens are emitted in order; a stable sort by row gives the unpacked layout.
                order = torch.argsort(rows, stable=True)
                token_logps, rows = token_logps[order], rows[order]
            return logps, lengths, token_logps, rows
        return logps, lengths

