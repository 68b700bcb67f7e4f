"""Packed (padding-free) batches give the per-sequence log-probs and gradients of the padded batch.

``SequenceScorer(packing=True)`` puts every sequence of a batch in one row, position ids restarting per
sequence and attention confined to it (``prefopt/scoring/layout.py``). The reference is the padded batch
with the same prompt sharing (``packing=False``), itself checked against full logits in
``test_logps_speed_paths.py``. (Shared against unshared scoring differs by ~4e-8 of the largest gradient
entry even in float64: transformers' LlamaRMSNorm computes in float32, so another attention summation order
can flip a float32 rounding. Packed against padded with the same sharing stays within 1e-9.) Bars: float64 1e-9, float32 rel 1e-5 (values; gradients relative to the
largest entry), on ``model=tiny`` and on a 2-layer model of SmolLM2-135M's shapes (9 heads of 64, 3 key/value
heads, GQA), so the head count is no power of two. The FlexAttention path runs forward-only on CPU
(torch 2.13 has no FlexAttention backward there), checked here against the dense mask.
"""

from __future__ import annotations

import pytest
import torch

from prefopt.data.collate import collate
from prefopt.scoring.layout import (
    allowed,
    attention_blocks,
    attention_kind,
    attention_mask_for,
    build_layout,
    flex_backward_ok,
    register_segments_attention,
)
from prefopt.scoring.logps import SequenceScorer
from prefopt.trainer.batching import row_length


@pytest.fixture(scope="module")
def rows():
    from prefopt import data as data_lib
    from prefopt.models import load_tokenizer
    from tests.conftest import compose

    tokenizer = load_tokenizer("tiny")
    train = data_lib.build_datasets(compose(["model=tiny"]).dataset, tokenizer, "paired").train
    # Different lengths, so the padded batch pads and the packed row holds sequences of several sizes.
    return sorted(train, key=row_length)[::29][:4], tokenizer.pad_token_id


def tiny(impl=None):
    from prefopt.models import load_model

    return load_model("tiny", "float32", attn_implementation=impl)


def smollm2_shaped(impl="sdpa"):
    """SmolLM2-135M's architecture (hidden 576, 9 query / 3 key-value heads of 64, MLP 1536, RoPE theta 1e5,
    tied 49,152-token head) with 2 of its 30 layers, random weights: no download needed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         attn_implementation=impl)
    return LlamaForCausalLM(config)


MODELS = {"tiny": tiny, "smollm2_shaped": smollm2_shaped}


def scored(model, batch, share, packing, n_pairs):
    model.zero_grad()
    scorer = SequenceScorer(model, share_prompt=share, packing=packing)
    logps, lengths, tokens, token_rows = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                                return_tokens=True, n_pairs=n_pairs)
    weights = torch.arange(1, logps.numel() + 1, dtype=logps.dtype)  # every row's gradient counts differently
    (logps * weights).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logps.detach(), lengths, tokens.detach(), token_rows, grads, scorer


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("kind", ["paired", "unpaired"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_packed_matches_padded(rows, model_name, kind, dtype, tol):
    chunk, pad_id = rows
    if kind == "unpaired":
        chunk = [{**r, "completion_ids": r["chosen_ids"], "desirable": True} for r in chunk]
    batch = collate(chunk, pad_id, kind)
    n_pairs = len(chunk) if kind == "paired" else None
    model = MODELS[model_name]().to(dtype)
    for share in ([False, True] if kind == "paired" else [False]):
        # Packed against padded with the same prompt sharing (shared-prompt rows padded to the longest pair).
        want, want_len, want_tokens, want_rows, want_grads, plain = scored(model, batch, share, False, n_pairs)
        got, got_len, tokens, token_rows, grads, packed = scored(model, batch, share, True, n_pairs)
        assert torch.equal(got_len, want_len)
        assert torch.equal(token_rows, want_rows)  # per-token log-probs come back in the padded order
        assert torch.allclose(got, want, rtol=tol, atol=0), (share, (got - want).abs().max())
        assert torch.allclose(tokens, want_tokens, rtol=0, atol=tol * float(want_tokens.abs().max()))
        scale = float(want_grads.abs().max())
        assert float((grads - want_grads).abs().max()) <= tol * scale, (share, float((grads - want_grads).abs().max()))
        # One row, nothing padded; the padded batch ran padding.
        assert packed.processed_tokens == packed.real_tokens
        assert plain.real_tokens < plain.processed_tokens
    # Not vacuous: the same packed row with attention across sequence boundaries gives other numbers.
    assert float((want - packed_without_boundaries(model, batch)).abs().max()) > 1e3 * tol


def packed_without_boundaries(model, batch):
    layout = build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], None, packed=True)
    layout.doc.zero_()  # one document: plain causal attention over the whole packed row
    mask = attention_mask_for(layout, "dense", model.dtype)
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=layout.input_ids, attention_mask=mask,
                                     position_ids=layout.position_ids).last_hidden_state
        logits = model.get_output_embeddings()(hidden[layout.pred_row, layout.pred_pos]).log_softmax(-1)
        token = logits.gather(-1, layout.targets[:, None]).squeeze(-1)
    return torch.zeros(batch["input_ids"].shape[0], dtype=token.dtype).index_add(0, layout.seq, token)


def test_packed_layout_by_hand():
    """Two rows, prompt lengths 2 and 1, completions of 2 and 3 tokens (ids 10-17), right-padded to width 4:

        row 0: [10 11 12 13]   completion from position 2
        row 1: [14 15 16 17]   completion from position 1

    Packed: one row [10 11 12 13 14 15 16 17], positions [0 1 2 3 0 1 2 3], documents [0 0 0 0 1 1 1 1].
    Scored: 12 predicted at packed position 1, 13 at 2; row 1's first token 14 sits at 4, so 15 is predicted
    at 4, 16 at 5, 17 at 6. Row 1's tokens (positions 4-7) see none of row 0's (0-3)."""
    ids = torch.tensor([[10, 11, 12, 13], [14, 15, 16, 17]])
    attention = torch.ones_like(ids)
    completion = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    layout = build_layout(ids, attention, completion, None, packed=True)
    assert layout.input_ids.tolist() == [[10, 11, 12, 13, 14, 15, 16, 17]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert layout.doc.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert layout.pred_pos.tolist() == [1, 2, 4, 5, 6]
    assert layout.targets.tolist() == [12, 13, 15, 16, 17]
    assert layout.seq.tolist() == [0, 0, 1, 1, 1]
    mask = allowed(layout)[0]
    assert mask[3, :4].all() and not mask[4, :4].any() and mask[7, 4:].all()
    assert (layout.real_tokens, layout.processed_tokens) == (8, 8)


def test_shared_pairs_packed_by_hand():
    """One pair, prompt [5 6], chosen [7 8], rejected [9]: packed [5 6 7 8 9], positions [0 1 2 3 2], parts
    [0 0 1 1 2]. The rejected token 9 (predicted from the last prompt position 1) sees the prompt and itself,
    not the chosen tokens; 7 is predicted at 1 and 8 at 2."""
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    completion = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    layout = build_layout(ids, attention, completion, 1, packed=True)
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert layout.part.tolist() == [[0, 0, 1, 1, 2]]
    assert list(zip(layout.pred_pos.tolist(), layout.targets.tolist(), layout.seq.tolist(), strict=True)) == [
        (1, 7, 0), (2, 8, 0), (1, 9, 1)]
    assert allowed(layout)[0, 4].tolist() == [True, True, False, False, True]
    assert layout.branched and layout.real_tokens == 5


def test_attention_kinds_and_varlen_refusal():
    assert [attention_kind(k) for k in (None, "sdpa", "eager", "flex_attention", "flash_attention_2",
                                        "flash_attention_3")] == ["dense", "dense", "dense", "flex", "varlen",
                                                                  "varlen"]
    ids = torch.tensor([[5, 6, 7], [5, 6, 9]])
    ones = torch.ones_like(ids)
    completion = torch.tensor([[0, 0, 1], [0, 0, 1]], dtype=torch.bool)
    unshared = build_layout(ids, ones, completion, None, packed=True)
    assert attention_mask_for(unshared, "varlen", torch.float32) is None  # position ids carry the boundaries
    shared = build_layout(ids, ones, completion, 1, packed=True)
    from prefopt.errors import PrefoptError

    with pytest.raises(PrefoptError, match="trainer.share_prompt=false"):
        attention_mask_for(shared, "varlen", torch.float32)


def test_flex_backward_probe_on_cpu():
    # torch 2.13's FlexAttention has no CPU backward; the probe is what the trainer's refusal asks.
    assert flex_backward_ok("cpu") is False


def test_flex_block_mask_forward_matches_dense_on_cpu(rows):
    """The FlexAttention path (compiled forward on CPU, about 30 s the first time) against the dense mask,
    no grad, float32: shared pairs both padded and packed."""
    from prefopt.models import load_model

    chunk, pad_id = rows
    batch = collate(chunk[:2], pad_id, "paired")
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    dense = load_model("tiny", "float32").eval()
    flex = load_model("tiny", "float32", attn_implementation="flex_attention").eval()
    with torch.no_grad():
        want = SequenceScorer(dense)(*args, n_pairs=2)[0]
        for packing in (False, True):
            got = SequenceScorer(flex, share_prompt=True, packing=packing)(*args, n_pairs=2)[0]
            assert torch.allclose(got, want, rtol=1e-5, atol=0), (packing, got, want)


@pytest.mark.parametrize("model_name, dtype, tol", [("tiny", torch.float64, 1e-9), ("tiny", torch.float32, 1e-5),
                                                    ("smollm2_shaped", torch.float32, 1e-5)])
def test_segments_attention_matches_dense_mask(rows, model_name, dtype, tol):
    """``sdpa_segments`` (one causal SDPA call per attention block) against the dense mask, for shared and
    unshared pairs, padded and packed: log-probs and every gradient (float64 measured 2.7e-16 of the
    largest gradient entry on model=tiny)."""
    register_segments_attention()
    chunk, pad_id = rows
    batch = collate(chunk, pad_id, "paired")
    dense = MODELS[model_name]().to(dtype)
    segments = MODELS[model_name]("sdpa_segments").to(dtype)
    segments.load_state_dict(dense.state_dict())
    assert attention_kind(segments.config._attn_implementation) == "segments"
    for share, packing in [(True, False), (True, True), (False, True)]:
        want, _, _, _, want_grads, _ = scored(dense, batch, share, packing, len(chunk))
        got, _, _, _, grads, _ = scored(segments, batch, share, packing, len(chunk))
        assert torch.allclose(got, want, rtol=tol, atol=0), (share, packing, (got - want).abs().max())
        scale = float(want_grads.abs().max())
        assert float((grads - want_grads).abs().max()) <= tol * scale, (share, packing)


def test_attention_blocks_by_hand():
    """A shared pair [5 6 | 7 8 | 9] (prompt 2, chosen 2, rejected 1), padded: prompt+chosen causal (0-4), then
    rejected (4-5) after the prompt's keys (0-2). Three unshared rows [5 6 7 8], [5 6 9], [3 4] packed into
    one row: one causal block per sequence (0-4, 4-7, 7-9)."""
    ids = torch.tensor([[5, 6, 7, 8], [3, 4, 0, 0], [5, 6, 9, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    completion = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    layout = build_layout(ids[[0, 2]], attention[[0, 2]], completion[[0, 2]], 1, packed=False)
    assert attention_blocks(layout) == [(0, 0, 4, 0, 0), (0, 4, 5, 0, 2)]
    two = build_layout(torch.cat([ids[[0, 2]], torch.tensor([[3, 4, 0, 0]])]),
                       torch.cat([attention[[0, 2]], torch.tensor([[1, 1, 0, 0]])]),
                       torch.cat([completion[[0, 2]], torch.tensor([[0, 1, 0, 0]], dtype=torch.bool)]),
                       None, packed=True)
    assert two.input_ids.tolist() == [[5, 6, 7, 8, 5, 6, 9, 3, 4]]
    assert attention_blocks(two) == [(0, 0, 4, 0, 0), (0, 4, 7, 4, 4), (0, 7, 9, 7, 7)]
