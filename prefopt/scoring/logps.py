"""Per-sequence log-probabilities of completions.

``SequenceScorer`` wraps a causal LM so that one forward returns, for each row, the sum of the
log-probs of its completion tokens (prompt and padding masked) and the number of those tokens. Four
things make it cheaper than the textbook ``log_softmax(model(x).logits)`` while giving the same numbers
(``tests/scoring/test_logps_speed_paths.py`` checks the first two against ``completion_logps_from_logits``
to 1e-5, ``tests/scoring/test_layout.py`` the third and ``tests/scoring/test_chunked_logps.py`` the
fourth against the plain padded path):

- **Head only where it is needed.** The decoder runs once; the vocabulary projection is applied only at
  the positions that predict a completion token, and the log-normalizer is a ``logsumexp`` over those
  rows. Neither the prompt's logits nor a full ``(rows, length, vocab)`` log-softmax is ever built; for
  SmolLM2 (vocab 49,152) the head is a fifth of the model's FLOPs per token.
- **Prompt shared by chosen and rejected** (``share_prompt``). A pair is laid out as one row
  ``[prompt, chosen, rejected]`` whose attention keeps rejected tokens from seeing chosen ones, with
  position ids that restart after the prompt, so the prompt is run once instead of twice. The last
  prompt position predicts the first token of both completions.
- **Packing** (``packing``). Every sequence (or shared-prompt pair) of the batch goes into one row, position
  ids restarting per sequence and attention confined to it, so no padding is processed. How the attention
  rule reaches the kernel (dense mask, FlexAttention block mask, flash-attention varlen) depends on the
  model's attention implementation: ``prefopt/scoring/layout.py``.
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
  full-logits path, unpacked and unshared; a head that is not a plain ``nn.Linear`` or that carries forward hooks
  (LoRA on the head, quantized or ZeRO-3-gathered heads) is applied whole, unchunked.

Being an ``nn.Module`` whose ``forward`` does all of this, it is what ``accelerate.prepare`` wraps, so
DDP/DeepSpeed hooks see every parameter use.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from prefopt.scoring.layout import attention_blocks, attention_kind, attention_mask_for, build_layout

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

    ``packing``: all sequences of a batch in one row, no padding (``prefopt/scoring/layout.py``); with
    ``share_prompt`` each pair in it is a ``[prompt, chosen, rejected]`` document.

    ``chunk_rows``: when a batch scores more than this many completion tokens through a plain linear
    head, the head and its logsumexp run over chunks of this many rows with a recomputing backward, so
    memory does not scale with tokens x vocabulary. At or below it the unchunked path runs, bit for bit
    as before (default runs with short rows do not move).

    ``real_tokens``/``processed_tokens``: running totals over every forward of the non-padding positions
    the decoder ran and of all positions it ran (padding included); their ratio is the token efficiency."""

    def __init__(self, model: nn.Module, share_prompt: bool = False, chunk_rows: int = CHUNK_ROWS,
                 packing: bool = False):
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.model = model
        self.share_prompt = share_prompt
        self.chunk_rows = chunk_rows
        self.packing = packing
        self.real_tokens = 0
        self.processed_tokens = 0

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
        layout = None
        share = self.share_prompt and bool(n_pairs)
        if decoder is not None and (share or self.packing):
            layout = build_layout(input_ids, attention_mask, completion_mask, n_pairs if share else None,
                                  self.packing)
        if layout is not None:
            dtype = head.weight.dtype if head.weight.is_floating_point() else torch.float32
            impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
            mask = attention_mask_for(layout, attention_kind(impl), dtype)
            extra = {"prefopt_blocks": attention_blocks(layout)} if attention_kind(impl) == "segments" else {}
            hidden = decoder(input_ids=layout.input_ids, attention_mask=mask,
                             position_ids=layout.position_ids, **extra).last_hidden_state
            token_logps = self._head_logps(head, hidden[layout.pred_row, layout.pred_pos], layout.targets)
            rows = layout.seq
            self.real_tokens += layout.real_tokens
            self.processed_tokens += layout.processed_tokens
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
            self.real_tokens += int(attention_mask.sum())
            self.processed_tokens += input_ids.numel()
        logps = torch.zeros(rows_out, dtype=token_logps.dtype, device=token_logps.device)
        logps = logps.index_add(0, rows, token_logps)
        if return_tokens:
            if layout is not None:
                # Each row's tokens are emitted in order; a stable sort by row gives the unpacked layout.
                order = torch.argsort(rows, stable=True)
                token_logps, rows = token_logps[order], rows[order]
            return logps, lengths, token_logps, rows
        return logps, lengths
