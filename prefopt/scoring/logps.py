"""Per-sequence log-probabilities of completions.

``SequenceScorer`` wraps a causal LM so that one forward returns, for each row, the sum of the
log-probs of its completion tokens (prompt and padding masked) and the number of those tokens. Three
things make it cheaper than the textbook ``log_softmax(model(x).logits)`` while giving the same numbers
(``tests/scoring/test_logps_speed_paths.py`` checks the first two against ``completion_logps_from_logits``
to 1e-5, ``tests/scoring/test_chunked_logps.py`` the third against the first):

- **Head only where it is needed.** The decoder runs once; the vocabulary projection is applied only at
  the positions that predict a completion token, and the log-normalizer is a ``logsumexp`` over those
  rows. Neither the prompt's logits nor a full ``(rows, length, vocab)`` log-softmax is ever built; for
  SmolLM2 (vocab 49,152) the head is a fifth of the model's FLOPs per token.
- **Prompt shared by chosen and rejected** (``share_prompt``). A pair is packed into one row
  ``[prompt, chosen, rejected]`` with a block attention mask (rejected tokens never see chosen ones) and
  position ids that restart after the prompt, so the prompt is run once instead of twice. The last
  prompt position predicts the first token of both completions. Padding queries attend to themselves
  only, so no softmax row is empty (an all-masked row would put NaN into the backward).
- **Chunked vocabulary projection** (``chunk_rows``). When more than ``chunk_rows`` completion tokens are
  scored at once, the head and its logsumexp run over chunks of ``chunk_rows`` rows inside one autograd
  function (``chunked_token_logps``, the fused linear + log-softmax idea): forward keeps only the ``(N,)``
  log-normalizers, backward recomputes each chunk's logits. Peak memory is ``O(chunk_rows x vocab)``
  instead of ``O(N x vocab)`` (a ``(2000, 49152)`` float32 logits tensor alone is 393 MB; ``model=tiny``,
  N=2000, one CPU thread: forward+backward peak RSS growth 1.56 GB unchunked, 0.16 GB at ``chunk_rows=256``,
  and 3.6 s -> 1.4 s, the allocations gone). At or below ``chunk_rows`` tokens the unchunked code runs,
  bit for bit as before. Values and gradients agree with the unchunked path to 1e-9 in float64 and 1e-5
  in float32.
- Models whose head does more than a linear map (logit soft-capping, logit scaling) take the plain
  full-logits path, unpacked; a head that is not a plain ``nn.Linear`` or that carries forward hooks
  (LoRA on the head, quantized or ZeRO-3-gathered heads) is applied whole, unchunked.

Being an ``nn.Module`` whose ``forward`` does all of this, it is what ``accelerate.prepare`` wraps, so
DDP/DeepSpeed hooks see every parameter use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# Completion tokens per chunk of the vocabulary projection; batches with at most this many scored tokens
# take the unchunked path. 4096 rows x 49,152 (SmolLM2) is an 805 MB float32 logits chunk.
CHUNK_ROWS = 4096


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


def _chunked_forward(hidden, weight, bias, targets, chunk_rows):
    """Target logit minus logsumexp per row, ``chunk_rows`` rows at a time. Each chunk's logits are what
    ``head(hidden)`` then ``_at_least_fp32`` give (the matmul in the weight's dtype, or autocast's, then
    upcast). Returns ``token_logps`` and ``lse``, both ``(N,)``, and the matmul's dtype."""
    n = hidden.shape[0]
    token_logps = lse = compute_dtype = None
    for start in range(0, n, chunk_rows):
        end = min(start + chunk_rows, n)
        raw = F.linear(hidden[start:end], weight, bias)
        logits = _at_least_fp32(raw)
        if token_logps is None:
            compute_dtype = raw.dtype
            token_logps = torch.empty(n, dtype=logits.dtype, device=logits.device)
            lse = torch.empty(n, dtype=logits.dtype, device=logits.device)
        lse[start:end] = torch.logsumexp(logits, dim=-1)
        token_logps[start:end] = logits.gather(-1, targets[start:end].unsqueeze(-1)).squeeze(-1) - lse[start:end]
        del raw, logits
    return token_logps, lse, compute_dtype


class _ChunkedLinearLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[targets]`` over row chunks, saving only ``lse`` ``(N,)``
    besides its inputs; backward recomputes each chunk's logits.

    The weight is an input, so its gradient reaches a tied (shared) parameter through the ordinary graph.
    With ``d = g * (onehot(target) - softmax)`` per chunk (cast to the matmul's dtype, as the backward of
    autograd's upcast would): ``grad_hidden = d @ W``, ``grad_W = sum over chunks of d.T @ hidden`` and
    ``grad_bias = sum of d``, the sums accumulated in ``lse``'s dtype (float32, float64 for float64)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        token_logps, lse, compute_dtype = _chunked_forward(hidden, weight, bias, targets, chunk_rows)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_rows, ctx.compute_dtype = chunk_rows, compute_dtype
        return token_logps

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, chunk_rows, dtype, acc = hidden.shape[0], ctx.chunk_rows, ctx.compute_dtype, lse.dtype
        w = weight.to(dtype)  # a no-op unless the forward ran under autocast
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, n, chunk_rows):
                end = min(start + chunk_rows, n)
                h = hidden[start:end].to(dtype)
                g = grad_out[start:end].to(acc).unsqueeze(-1)
                d = _at_least_fp32(F.linear(h, w, b)).sub_(lse[start:end].unsqueeze(-1)).exp_().mul_(-g)
                d.scatter_add_(-1, targets[start:end].unsqueeze(-1), g)
                d = d.to(dtype)
                if need_h:
                    grad_h[start:end] = (d @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (d.T @ h).to(acc)
                if need_b:
                    grad_b += d.sum(0).to(acc)
                del d
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``log_softmax(F.linear(hidden, weight, bias))`` at ``targets``, ``(N,)``, without an ``(N, V)``
    tensor: hidden ``(N, d)``, weight ``(V, d)``, bias ``(V,)`` or None, targets ``(N,)``. Under
    ``torch.no_grad`` (or with nothing requiring grad) nothing is saved for backward."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _ChunkedLinearLogps.apply(hidden, weight, bias, targets, chunk_rows)
    return _chunked_forward(hidden, weight, bias, targets, chunk_rows)[0]


def _plain_linear(head) -> bool:
    # F.linear on the head's own tensors must be what head(x) computes: no subclass (quantized layers),
    # no wrapper (LoRA), no hooks (ZeRO-3 gathers weights in a pre-forward hook).
    return (type(head) is nn.Linear and head.weight.is_floating_point()
            and not head._forward_hooks and not head._forward_pre_hooks)


class SequenceScorer(nn.Module):
    """``share_prompt``: pack paired batches so each prompt is run once (see the module docstring).

    ``chunk_rows``: when a batch scores more than this many completion tokens through a plain linear
    head, the head and its logsumexp run over chunks of this many rows with a recomputing backward, so
    memory does not scale with tokens x vocabulary. At or below it the unchunked path runs, bit for bit
    as before (default runs with short rows do not move)."""

    def __init__(self, model: nn.Module, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS):
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.model = model
        self.share_prompt = share_prompt
        self.chunk_rows = chunk_rows

    def _head_logps(self, head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] > self.chunk_rows and _plain_linear(head):
            return chunked_token_logps(hidden, head.weight, head.bias, targets, self.chunk_rows)
        return _token_logps(head(hidden), targets)

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
            token_logps = self._head_logps(head, hidden[packed.pred_row, packed.pred_pos], packed.targets)
            rows = packed.seq
        else:
            target_mask = completion_mask[:, 1:]
            rows, positions = target_mask.nonzero(as_tuple=True)
            targets = input_ids[:, 1:][rows, positions]
            if decoder is None:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
                token_logps = _token_logps(logits[:, :-1][rows, positions], targets)
            else:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                token_logps = self._head_logps(head, hidden[:, :-1][rows, positions], targets)
        logps = torch.zeros(rows_out, dtype=token_logps.dtype, device=token_logps.device)
        logps = logps.index_add(0, rows, token_logps)
        if return_tokens:
            if packed is not None:
                # Each row's tokens are emitted in order; a stable sort by row gives the unpacked layout.
                order = torch.argsort(rows, stable=True)
                token_logps, rows = token_logps[order], rows[order]
            return logps, lengths, token_logps, rows
        return logps, lengths

