"""Batched sampling from a chat model with reproducible seeds.

Policy and reference are sampled with the same seeds and the same batch composition, so a benchmark
compares them on equal footing (the DPO paper's controlled-sentiment protocol).

Two samplers:

- ``sample``: ``model.generate`` with one global seed per batch (``seed + first row``): a row's draws
  depend on which rows share its batch. The judged benchmarks and the asset script use it.
- ``sample_streams``: one random stream per (prompt id, sample number), seeded by ``stream_seed`` from the
  benchmark's seed alone, with its own KV-cache decoding loop. Prompt 17's sample 2 is drawn from the same
  uniform numbers in every run of a study, whatever the training seed, the batch size or the other prompts;
  the reference's samples are then a function of (model, prompt, settings, seed, prompt id, sample) and
  can be cached (``prefopt.benchmarks.sample_cache``), and two runs' samples pair prompt by prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from prefopt.data.tokenize import prompt_token_ids, render_prompt


@dataclass
class SampleSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[dict[str, str]]], settings: SampleSettings,
           eot_token: str | None = None) -> list[dict]:
    """One completion per prompt: ``{"text", "completion_ids", "prompt_ids", "finished"}``.

    ``finished`` is False when the completion hit ``max_new_tokens`` before the end-of-turn token.
    """
    eot_id = tokenizer.convert_tokens_to_ids(eot_token) if eot_token else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = [prompt_token_ids(tokenizer, render_prompt(tokenizer, p)) for p in prompts[start:start + settings.batch_size]]
        width = max(len(ids) for ids in batch)
        # Left padding so every prompt ends where generation starts.
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        torch.manual_seed(settings.seed + start)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=settings.temperature > 0,
            temperature=settings.temperature if settings.temperature > 0 else None,
            top_p=settings.top_p if settings.temperature > 0 else None,
            top_k=0 if settings.temperature > 0 else None,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=eot_id,
            pad_token_id=pad_id,
        )
        for ids, row in zip(batch, generated[:, width:].tolist(), strict=True):
            completion = []
            finished = False
            for token in row:
                if token == eot_id:
                    finished = True
                    break
                completion.append(token)
            outputs.append({
                "text": tokenizer.decode(completion, skip_special_tokens=True).strip(),
                "completion_ids": completion + ([eot_id] if finished else []),
                "prompt_ids": ids,
                "finished": finished,
            })
    model.train(was_training)
    return outputs


def stream_seed(seed: int, prompt_id: int, sample_index: int) -> int:
    """The seed of the random stream of sample ``sample_index`` of prompt ``prompt_id`` (63 bits of a hash,
    so neighbouring ids get unrelated streams, which ``seed + id`` would not guarantee)."""
    digest = hashlib.blake2b(f"stream:{seed}:{prompt_id}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _draw(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``logits`` (B, V) from the row's uniform number in [0, 1): inverse-CDF sampling
    over the tokens sorted by probability, restricted to the top-p nucleus (the smallest set whose
    probability reaches ``top_p``); greedy at temperature 0."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(-1)
    # A token stays when the tokens before it have not yet reached top_p (so the first always stays).
    sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs >= top_p, 0.0)
    cdf = sorted_probs.cumsum(-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    position = (cdf <= target).sum(-1).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, position.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_streams(model, tokenizer, prompts: list[list[dict[str, str]]], streams: list[tuple[int, int]],
                   settings: SampleSettings, eot_token: str | None = None) -> list[dict]:
    """One completion per prompt, row i drawn from the stream ``streams[i] = (prompt_id, sample)`` seeded
    by ``stream_seed(settings.seed, prompt_id, sample)``: ``{"text", "completion_ids", "prompt_ids",
    "finished", "logp"}``. ``logp`` is the model's own log-probability of the completion (temperature 1, no
    nucleus, end-of-turn token included when ``finished``), summed over its tokens during decoding."""
    if len(streams) != len(prompts):
        raise ValueError(f"sample_streams: {len(prompts)} prompts but {len(streams)} streams")
    eot_id = tokenizer.convert_tokens_to_ids(eot_token) if eot_token else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(prompts), settings.batch_size):
            batch = [prompt_token_ids(tokenizer, render_prompt(tokenizer, p))
                     for p in prompts[start:start + settings.batch_size]]
            generators = [torch.Generator().manual_seed(stream_seed(settings.seed, *stream))
                          for stream in streams[start:start + settings.batch_size]]
            outputs.extend(_decode(model, batch, generators, settings, eot_id, pad_id, device, tokenizer))
    finally:
        model.train(was_training)
    return outputs


def _cache_argument(out) -> dict:
    # transformers 5 renamed past_key_values to cache (the old name warns); the range we support has both.
    if "cache" in out:
        return {"cache": out["cache"]}
    return {"past_key_values": out["past_key_values"]}


def _decode(model, batch: list[list[int]], generators, settings: SampleSettings, eot_id: int, pad_id: int,
            device, tokenizer) -> list[dict]:
    n = len(batch)
    width = max(len(ids) for ids in batch)
    # Left padding so every prompt ends where generation starts; positions count real tokens only.
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
    completions: list[list[int]] = [[] for _ in range(n)]
    logps = [0.0] * n
    done = [False] * n
    for _ in range(settings.max_new_tokens):
        logits = out.logits[:, -1, :].float()
        # Every row draws its number whether or not it is done, so a stream never depends on its neighbours.
        uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
        tokens = _draw(logits, uniforms.to(device), settings.temperature, settings.top_p)
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        for i, (token, logp) in enumerate(zip(tokens.tolist(), token_logps.tolist(), strict=True)):
            if done[i]:
                continue
            completions[i].append(token)
            logps[i] += logp
            done[i] = token == eot_id
        if all(done):
            break
        attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=device)], dim=-1)
        positions = positions[:, -1:] + 1
        # A finished row keeps decoding its own draws, unread: rows never attend to each other.
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=attention, position_ids=positions,
                    use_cache=True, **_cache_argument(out))
    results = []
    for ids, completion, logp, finished in zip(batch, completions, logps, done, strict=True):
        text_ids = completion[:-1] if finished else completion
        results.append({"text": tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                        "completion_ids": completion, "prompt_ids": ids, "finished": finished, "logp": logp})
    return results
