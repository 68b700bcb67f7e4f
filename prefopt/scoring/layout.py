"""Where each token of a batch goes in the decoder's input, and what it may attend to.

A collated batch is right-padded rows ``prompt + completion``. ``SequenceScorer`` can lay it out two other
ways, both described by one ``Layout``:

- **Prompt sharing** (``share``): a pair's chosen and rejected rows become one *document*
  ``[prompt, chosen, rejected]``: the prompt is run once, and each completion (a *branch*) sees the prompt
  and itself, never the other branch. Branch positions both start after the prompt.
- **Packing** (``packed``): every document of the micro-batch is concatenated into one row, position ids
  restarting at 0 in each, attention confined to each document. No padding is processed at all.

Every token carries a document id ``doc`` (-1 on padding) and a part (0 for the prompt, ``k`` for the
``k``-th branch). Query ``q`` may attend to key ``kv`` of the same row iff

    kv <= q  and  doc[kv] == doc[q]  and  (part[kv] == 0 or part[kv] == part[q])

which is causal attention within each document, with branches blind to each other. Padding (doc -1) sees
earlier padding only, so no softmax row is empty (an all-masked row would put NaN into the backward), and
no real token ever sees padding.

The attention implementation of the model decides how that rule reaches the kernel (``attention_mask_for``):

- ``sdpa``/``eager``: a dense ``(rows, 1, L, L)`` additive float mask. Works everywhere, but costs O(L^2)
  memory and the kernel computes the masked blocks too: for a packed row L is the whole micro-batch's
  token count, so on CPU packing saves the padding but spends more attention work on masked blocks (the
  numerics reference, not a memory saving).
- ``flex_attention``: a FlexAttention ``BlockMask`` built from the same rule; the kernel skips blocks that
  are fully masked, and nothing ``L x L`` is materialized. torch 2.13 runs its forward on CPU (compiled,
  about 30 s the first time) but has no CPU backward: training with it needs a GPU (``flex_backward_ok``).
- ``sdpa_segments`` (prefopt's own, registered with transformers by ``load_model``): the layout's attention
  as one exact SDPA call per block (``attention_blocks``): a prompt with its first branch is one causal call,
  each later branch one call over the prompt's keys and its own. No ``L x L`` mask, the masked blocks are
  never computed, and the kernel takes its causal path, so packing pays on CPU too. Batches without a
  layout (generation, evaluation helpers) run as plain sdpa.
- ``flash_attention_*``: no mask at all. A packed row without branches goes in with ``attention_mask=None``
  and its position ids; transformers derives the varlen ``cu_seq_lens`` from where the positions restart.
  Branches cannot be expressed that way (the rejected branch must see a prompt that is not contiguous with
  it), so prompt sharing with flash attention is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from prefopt.errors import PrefoptError


@dataclass
class Layout:
    """Decoder inputs ``(rows, L)`` and, for the ``N`` scored tokens, the hidden state predicting each
    (``pred_row``, ``pred_pos``), the token (``targets``) and the collated row it belongs to (``seq``), all
    ``(N,)``. ``real_tokens``: the non-padding tokens among the ``rows x L`` processed."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    doc: torch.Tensor
    part: torch.Tensor
    pred_row: torch.Tensor
    pred_pos: torch.Tensor
    targets: torch.Tensor
    seq: torch.Tensor
    real_tokens: int
    branched: bool  # some document has two branches (prompt sharing happened)

    @property
    def processed_tokens(self) -> int:
        return self.input_ids.numel()


def build_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                 n_pairs: int | None, packed: bool) -> Layout | None:
    """The layout of a collated batch. ``n_pairs``: share each pair's prompt (rows ``[chosen_0..B-1,
    rejected_0..B-1]``); None: every row is its own document. A pair whose rows do not share their prompt,
    or has an empty one, becomes two documents. Returns None when the batch is not right-padded rows with
    one contiguous completion each (the caller then scores it as it is)."""
    n_rows, width = input_ids.shape
    lengths = attention_mask.sum(-1)
    starts = completion_mask.float().argmax(-1)
    arange = torch.arange(width, device=input_ids.device)
    expected_attention = arange < lengths[:, None]
    expected_completion = expected_attention & (arange >= starts[:, None])
    if not (torch.equal(attention_mask.bool(), expected_attention) and torch.equal(completion_mask.bool(),
                                                                                   expected_completion)):
        return None
    if not bool(completion_mask.any(-1).all()):
        return None
    ids, lengths, starts = input_ids.tolist(), lengths.tolist(), starts.tolist()

    # A document: (prompt tokens, [(completion tokens, collated row), ...]).
    docs: list[tuple[list[int], list[tuple[list[int], int]]]] = []
    shared = n_pairs is not None and n_rows == 2 * n_pairs
    for i in range(n_pairs if shared else n_rows):
        p = starts[i]
        if shared:
            j = n_pairs + i
            if p > 0 and starts[j] == p and ids[i][:p] == ids[j][:p]:
                docs.append((ids[i][:p], [(ids[i][p:lengths[i]], i), (ids[j][p:lengths[j]], j)]))
                continue
        docs.append((ids[i][:p], [(ids[i][p:lengths[i]], i)]))
    if shared:  # the rejected rows of the pairs that could not share their prompt
        done = {source for _, branches in docs for _, source in branches}
        docs += [(ids[j][:starts[j]], [(ids[j][starts[j]:lengths[j]], j)]) for j in range(n_pairs, n_rows)
                 if j not in done]

    sizes = [len(prompt) + sum(len(c) for c, _ in branches) for prompt, branches in docs]
    if packed:
        rows_of, offsets, n_out, out_width = [0] * len(docs), [], 1, sum(sizes)
        for k in range(len(docs)):
            offsets.append(sum(sizes[:k]))
    else:
        rows_of, offsets, n_out, out_width = list(range(len(docs))), [0] * len(docs), len(docs), max(sizes)
    flat_ids = [0] * (n_out * out_width)  # padding id: never attended to by a real token, never scored
    flat_pos = [0] * (n_out * out_width)
    flat_doc = [-1] * (n_out * out_width)
    flat_part = [0] * (n_out * out_width)
    pred_row, pred_pos, targets, seq = [], [], [], []
    for d, ((prompt, branches), row, offset) in enumerate(zip(docs, rows_of, offsets, strict=True)):
        base = row * out_width + offset
        p = len(prompt)
        flat_ids[base:base + p] = prompt
        flat_pos[base:base + p] = range(p)
        flat_doc[base:base + p] = [d] * p
        at = offset + p  # position of the next token in the output row
        for part, (tokens, source) in enumerate(branches, start=1):
            n = len(tokens)
            flat_ids[row * out_width + at:row * out_width + at + n] = tokens
            flat_pos[row * out_width + at:row * out_width + at + n] = range(p, p + n)
            flat_doc[row * out_width + at:row * out_width + at + n] = [d] * n
            flat_part[row * out_width + at:row * out_width + at + n] = [part] * n
            for j, token in enumerate(tokens):
                if j == 0 and p == 0:
                    continue  # the first token of a row is never scored: nothing predicts it
                pred_row.append(row)
                pred_pos.append(offset + p - 1 if j == 0 else at + j - 1)
                targets.append(token)
                seq.append(source)
            at += n
    device = input_ids.device
    as_long = dict(dtype=torch.long, device=device)
    shape = (n_out, out_width)
    return Layout(
        input_ids=torch.tensor(flat_ids, dtype=input_ids.dtype, device=device).view(shape),
        position_ids=torch.tensor(flat_pos, **as_long).view(shape),
        doc=torch.tensor(flat_doc, **as_long).view(shape),
        part=torch.tensor(flat_part, **as_long).view(shape),
        pred_row=torch.tensor(pred_row, **as_long), pred_pos=torch.tensor(pred_pos, **as_long),
        targets=torch.tensor(targets, **as_long), seq=torch.tensor(seq, **as_long),
        real_tokens=sum(sizes), branched=any(len(branches) > 1 for _, branches in docs),
    )


def allowed(layout: Layout) -> torch.Tensor:
    """The attention rule of the module docstring as a dense boolean ``(rows, L, L)`` (query, key)."""
    doc, part = layout.doc, layout.part
    width = doc.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=doc.device).tril()
    same_doc = doc[:, :, None] == doc[:, None, :]
    visible = (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
    return causal & same_doc & visible


def mask_mod(layout: Layout):
    """The same rule as a FlexAttention ``mask_mod(batch, head, q, kv)``."""
    doc, part = layout.doc, layout.part

    def rule(b, h, q, kv):
        return (kv <= q) & (doc[b, q] == doc[b, kv]) & ((part[b, kv] == 0) | (part[b, kv] == part[b, q]))

    return rule


def attention_kind(impl: str | None) -> str:
    """``flex``, ``varlen`` (flash attention), ``segments`` (``sdpa_segments``) or ``dense`` (sdpa, eager and
    anything else), for an attention implementation name as transformers knows it
    (``model.config._attn_implementation``)."""
    impl = str(impl or "")
    if impl == "flex_attention":
        return "flex"
    if impl == SEGMENTS:
        return "segments"
    if "flash" in impl:
        return "varlen"
    return "dense"


def attention_mask_for(layout: Layout, kind: str, dtype: torch.dtype):
    """What the decoder gets as ``attention_mask`` for ``layout`` under attention ``kind``."""
    if kind == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        rows, width = layout.doc.shape
        return create_block_mask(mask_mod(layout), rows, None, width, width, device=layout.doc.device)
    if kind == "segments":
        # A placeholder 4-D mask: transformers passes a 4-D mask through untouched instead of building an (L, L)
        # one from the position ids; segments_attention reads the layout's blocks instead.
        return torch.zeros((1, 1, 0, 0), dtype=dtype, device=layout.doc.device)
    if kind == "varlen":
        if layout.branched or layout.input_ids.shape[0] != 1:
            raise PrefoptError("flash attention takes no attention mask: prompt sharing (trainer.share_prompt) "
                               "cannot be expressed for it; set trainer.share_prompt=false")
        return None  # the position ids mark where each sequence starts (cu_seq_lens)
    mask = torch.zeros((*layout.doc.shape, layout.doc.shape[1]), dtype=dtype, device=layout.doc.device)
    mask.masked_fill_(~allowed(layout), torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def flex_backward_ok(device) -> bool:
    """Whether FlexAttention can back-propagate on ``device`` (torch 2.13: not on CPU). Eager flex_attention
    checks the device before any compute, so on CPU this costs microseconds."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.zeros((1, 1, 16, 16), device=device, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


# ``model.attn_implementation=sdpa_segments``: sdpa, except that a batch laid out by this module runs one
# exact causal SDPA call per attention block instead of one call over the whole row with a dense mask.
SEGMENTS = "sdpa_segments"


def attention_blocks(layout: Layout) -> list[tuple[int, int, int, int, int]]:
    """The attention of ``layout`` as SDPA calls ``(row, q_start, q_end, prompt_start, prompt_end)``: queries
    ``[q_start, q_end)`` attend causally to themselves and to every key of ``[prompt_start, prompt_end)``
    (an empty range for a prompt together with its first branch, which are contiguous). Padding is in no
    block (its outputs are never read)."""
    doc, part = layout.doc.tolist(), layout.part.tolist()
    blocks = []
    for row, (docs, parts) in enumerate(zip(doc, part, strict=True)):
        start = 0
        while start < len(docs):
            d = docs[start]
            end = start
            while end < len(docs) and docs[end] == d:
                end += 1
            if d >= 0:
                # Within the document: the prompt and the first branch, then every later branch after the prompt.
                prompt_end = start
                while prompt_end < end and parts[prompt_end] == 0:
                    prompt_end += 1
                q = prompt_end
                while q < end and parts[q] == parts[prompt_end]:
                    q += 1
                blocks.append((row, start, q, start, start))
                while q < end:
                    branch_end = q
                    while branch_end < end and parts[branch_end] == parts[q]:
                        branch_end += 1
                    blocks.append((row, q, branch_end, start, prompt_end))
                    q = branch_end
            start = end
    return blocks


def segments_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       prefopt_blocks=None, **kwargs):
    """transformers attention function (``AttentionInterface``) of ``sdpa_segments``. ``prefopt_blocks``
    (from ``attention_blocks``, passed through the decoder's kwargs): one SDPA call per block, causal within
    the block, the prompt's keys in front; without it, plain sdpa. Work is the sum of the blocks' squares
    instead of the packed row's, and the kernel takes its causal fast path."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if prefopt_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = query.new_zeros(query.shape)
    for row, q0, q1, p0, p1 in prefopt_blocks:
        q = query[row:row + 1, :, q0:q1]
        if p1 == p0:
            k, v = key[row:row + 1, :, q0:q1], value[row:row + 1, :, q0:q1]
            block = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout)
        else:
            k = torch.cat([key[row:row + 1, :, p0:p1], key[row:row + 1, :, q0:q1]], dim=2)
            v = torch.cat([value[row:row + 1, :, p0:p1], value[row:row + 1, :, q0:q1]], dim=2)
            n, prompt = q1 - q0, p1 - p0
            # Query i sees the whole prompt and branch keys 0..i: causal aligned to the bottom-right corner.
            mask = torch.ones((n, prompt + n), dtype=torch.bool, device=query.device).tril(diagonal=prompt)
            block = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, dropout_p=dropout)
        out[row:row + 1, :, q0:q1] = block
    return out.transpose(1, 2).contiguous(), None


def register_segments_attention() -> None:
    """Make ``sdpa_segments`` an attention implementation transformers accepts (its masks are sdpa's)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SEGMENTS, segments_attention)
    AttentionMaskInterface.register(SEGMENTS, sdpa_mask)
