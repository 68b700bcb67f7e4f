"""The chunked vocabulary projection gives the unchunked numbers and never holds a (tokens x vocab) tensor.

``chunked_token_logps`` computes ``log_softmax(hidden @ W.T + b)`` at the targets over chunks of rows with
a recomputing backward; ``SequenceScorer(chunk_rows=k)`` uses it when more than ``k`` completion tokens are
scored. Against the unchunked path (``_token_logps`` of the whole head output, itself checked against full
logits in ``test_logps_speed_paths.py``): values and gradients agree to 1e-9 in float64 and 1e-5 in
float32 (the tiny model's gradients: relative to the largest entry), with chunk sizes (3, 7) that leave a
ragged last chunk. The memory claim is checked without
timing or RSS: the sizes of the tensors saved for backward, seen through ``saved_tensors_hooks``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prefopt.data.collate import collate
from prefopt.models import load_model
from prefopt.scoring import logps as logps_mod
from prefopt.scoring.logps import SequenceScorer, _token_logps, chunked_token_logps

TOL = {torch.float64: 1e-9, torch.float32: 1e-5}

# Three pairs with prompts of different lengths: 41 chosen + 48 rejected = 89 completion tokens, more
# than the tiny model's hidden size (64), and 89 = 12 * 7 + 5 = 29 * 3 + 2 (ragged last chunks).
PAIRS = [(4, 12, 15), (6, 20, 8), (3, 9, 25)]
N_TOKENS = 89


def _rows():
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(1, 49152, (n,), generator=g).tolist()

    return [{"index": i, "prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
            for i, (p, c, r) in enumerate(PAIRS)]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny", "float32")


@pytest.fixture(scope="module")
def batch():
    b = collate(_rows(), 0, "paired")
    assert int(b["completion_mask"][:, 1:].sum()) == N_TOKENS
    return b


def _count_chunked(monkeypatch):
    calls = []
    real = logps_mod._chunked_forward

    def counting(hidden, weight, bias, targets, chunk_rows):
        calls.append(hidden.shape[0])
        return real(hidden, weight, bias, targets, chunk_rows)

    monkeypatch.setattr(logps_mod, "_chunked_forward", counting)
    return calls


def _maxdiff(a, b):
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [3, 7])
def test_random_tensors_values_and_gradients(dtype, with_bias, chunk_rows):
    g = torch.Generator().manual_seed(1)
    n, d, v = 23, 8, 50
    h = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(v, d, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(v, dtype=dtype, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(v, (n,), generator=g)
    upstream = torch.randn(n, dtype=dtype, generator=g)
    inputs = (h, w) + ((b,) if with_bias else ())

    want = _token_logps(F.linear(h, w, b), targets)
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    got = chunked_token_logps(h, w, b, targets, chunk_rows)
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)

    assert got.dtype == want.dtype == dtype
    assert _maxdiff(got, want) < TOL[dtype]
    for x, y in zip(got_grads, want_grads, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert _maxdiff(x, y) < TOL[dtype]


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(10, 4, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(13, 4, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(13, dtype=torch.float64, generator=g).requires_grad_()
    targets = torch.randint(13, (10,), generator=g)
    assert torch.autograd.gradcheck(lambda h, w, b: chunked_token_logps(h, w, b, targets, 3), (h, w, b))


def test_bfloat16_keeps_dtypes_and_upcasts_logits():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(23, 8, generator=g).bfloat16().requires_grad_()
    w = torch.randn(50, 8, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(50, (23,), generator=g)
    want = _token_logps(F.linear(h, w), targets)
    want_grads = torch.autograd.grad(want.sum(), (h, w))
    got = chunked_token_logps(h, w, None, targets, 7)
    got_grads = torch.autograd.grad(got.sum(), (h, w))
    assert got.dtype == torch.float32
    assert torch.equal(got, want)  # same bf16 matmul per row, same float32 logsumexp
    assert [x.dtype for x in got_grads] == [torch.bfloat16, torch.bfloat16]
    # grad_hidden has the same roundings; grad_W sums bf16 chunk partials in float32 (autograd: one bf16 matmul).
    assert torch.equal(got_grads[0], want_grads[0])
    assert _maxdiff(got_grads[1].float(), want_grads[1].float()) < 0.05 * float(want_grads[1].abs().max())


def test_autocast_bfloat16_matches_autograd():
    # Under autocast the head's matmul runs in bf16 on float32 weights; backward must recompute in bf16
    # and hand float32 gradients back, as autograd's casts do.
    g = torch.Generator().manual_seed(6)
    h = torch.randn(23, 8, generator=g).requires_grad_()
    w = torch.randn(50, 8, generator=g).requires_grad_()
    b = torch.randn(50, generator=g).requires_grad_()
    targets = torch.randint(50, (23,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _token_logps(F.linear(h, w, b), targets)
        got = chunked_token_logps(h, w, b, targets, 7)
    want_grads = torch.autograd.grad(want.sum(), (h, w, b))
    got_grads = torch.autograd.grad(got.sum(), (h, w, b))
    assert torch.equal(got, want)
    assert [x.dtype for x in got_grads] == [torch.float32] * 3
    assert torch.equal(got_grads[0], want_grads[0])
    for x, y in zip(got_grads[1:], want_grads[1:], strict=True):  # bf16 chunk partials summed in float32
        assert _maxdiff(x, y) < 0.05 * float(y.abs().max())


def _score_and_grads(model, batch, share, chunk_rows, return_tokens=False):
    model.zero_grad()
    scorer = SequenceScorer(model, share_prompt=share, chunk_rows=chunk_rows)
    out = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                 return_tokens=return_tokens, n_pairs=len(PAIRS))
    weights = torch.arange(1, 7, dtype=out[0].dtype)
    loss = (out[0] * weights).sum()
    if return_tokens:
        loss = loss + (out[2] * torch.linspace(-1, 1, out[2].numel(), dtype=out[2].dtype)).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return [t.detach() for t in out], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("share", [False, True])
def test_tiny_model_chunked_equals_unchunked(tiny, batch, monkeypatch, dtype, share):
    model = tiny.to(dtype)
    try:
        assert model.lm_head.weight is model.get_input_embeddings().weight  # tied: one shared parameter
        want, want_grads = _score_and_grads(model, batch, share, logps_mod.CHUNK_ROWS, return_tokens=True)
        calls = _count_chunked(monkeypatch)
        got, got_grads = _score_and_grads(model, batch, share, 7, return_tokens=True)
        assert calls == [N_TOKENS]  # the chunked path ran, over 13 chunks (the last one of 5 rows)
        assert torch.equal(got[1], want[1]) and torch.equal(got[3], want[3])  # lengths, token rows
        assert _maxdiff(got[0], want[0]) < TOL[dtype]  # sequence sums
        assert _maxdiff(got[2], want[2]) < TOL[dtype]  # per-token log-probs
        # Every parameter, the tied embedding/head included. Gradients reach |31.7| here, so the bar is
        # scaled by the largest entry where that exceeds 1 (float32 measured: 7.6e-6 absolute).
        scale = max(1.0, max(float(g.abs().max()) for g in want_grads.values()))
        for name, grad in want_grads.items():
            assert _maxdiff(got_grads[name], grad) < TOL[dtype] * scale, name
    finally:
        model.zero_grad()
        model.to(torch.float32)


def test_tiny_model_bias_head(tiny, batch, monkeypatch):
    model = copy.deepcopy(tiny).to(torch.float64)
    old = model.lm_head
    model.lm_head = nn.Linear(old.in_features, old.out_features, bias=True, dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.copy_(old.weight)
        model.lm_head.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    assert model.get_output_embeddings() is model.lm_head
    want, want_grads = _score_and_grads(model, batch, True, logps_mod.CHUNK_ROWS)
    calls = _count_chunked(monkeypatch)
    got, got_grads = _score_and_grads(model, batch, True, 3)
    assert calls == [N_TOKENS]
    assert _maxdiff(got[0], want[0]) < 1e-9
    assert float(want_grads["lm_head.bias"].abs().max()) > 1e-3  # the bias gradient is exercised
    for name, grad in want_grads.items():
        assert _maxdiff(got_grads[name], grad) < 1e-9, name


def _saved_numels(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes


def test_saved_tensors_do_not_scale_with_tokens_times_vocab():
    g = torch.Generator().manual_seed(5)
    n, d, v, chunk = 300, 16, 4000, 32
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = torch.randn(v, d, generator=g).requires_grad_()
    targets = torch.randint(v, (n,), generator=g)
    _, plain = _saved_numels(lambda: _token_logps(F.linear(h, w), targets))
    assert max(plain) >= n * v  # the hooks see the unchunked (N, V) logits
    _, chunked = _saved_numels(lambda: chunked_token_logps(h, w, None, targets, chunk))
    assert chunked and max(chunked) < n * v
    assert sum(chunked) <= n * d + v * d + 2 * n  # hidden, weight, targets, lse: nothing O(N x V)


@pytest.mark.parametrize("share", [False, True])
def test_tiny_model_saves_nothing_of_tokens_times_vocab(tiny, batch, share):
    v = tiny.config.vocab_size
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    _, plain = _saved_numels(lambda: SequenceScorer(tiny, share)(*args, n_pairs=len(PAIRS)))
    assert max(plain) >= N_TOKENS * v
    _, chunked = _saved_numels(lambda: SequenceScorer(tiny, share, chunk_rows=7)(*args, n_pairs=len(PAIRS)))
    assert max(chunked) < N_TOKENS * v


def test_no_grad_saves_nothing(tiny, batch, monkeypatch):
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        want = SequenceScorer(tiny, True)(*args, n_pairs=len(PAIRS))[0]
        calls = _count_chunked(monkeypatch)
        got, saved = _saved_numels(lambda: SequenceScorer(tiny, True, chunk_rows=7)(*args, n_pairs=len(PAIRS))[0])
    assert calls == [N_TOKENS] and saved == [] and got.grad_fn is None
    assert _maxdiff(got, want) < 1e-5
    # Inputs that need no grad, with grad mode on: the function is not recorded either.
    h, w, t = torch.randn(10, 4), torch.randn(9, 4), torch.randint(9, (10,))
    out, saved = _saved_numels(lambda: chunked_token_logps(h, w, None, t, 3))
    assert saved == [] and out.grad_fn is None


def test_at_or_below_chunk_rows_is_the_unchunked_path(tiny, batch, monkeypatch):
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    calls = _count_chunked(monkeypatch)
    with torch.no_grad():
        default = SequenceScorer(tiny, True)(*args, n_pairs=len(PAIRS))[0]
        at_limit = SequenceScorer(tiny, True, chunk_rows=N_TOKENS)(*args, n_pairs=len(PAIRS))[0]
    assert calls == [] and torch.equal(default, at_limit)
    assert logps_mod.CHUNK_ROWS > N_TOKENS
    with pytest.raises(ValueError, match="chunk_rows"):
        SequenceScorer(tiny, chunk_rows=0)


def test_head_with_hooks_is_not_chunked(tiny, batch, monkeypatch):
    # A pre-forward hook may gather or replace the weight (ZeRO-3); F.linear on head.weight would skip it.
    model = copy.deepcopy(tiny)
    seen = []
    model.lm_head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
    calls = _count_chunked(monkeypatch)
    with torch.no_grad():
        SequenceScorer(model, False, chunk_rows=7)(batch["input_ids"], batch["attention_mask"],
                                                   batch["completion_mask"], n_pairs=len(PAIRS))
    assert calls == [] and seen == [N_TOKENS]
