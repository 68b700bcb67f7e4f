"""Batched sampling from a chat model with reproducible seeds.

Policy and reference are sampled with the same seed per batch and the same batch composition, so a
benchmark compares them on equal footing (the DPO paper's controlled-sentiment protocol).
"""

from __future__ import annotations

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
