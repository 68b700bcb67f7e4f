"""Chat-template tokenization of prompts and completions, with truncation and a loss mask.

Conventions (each one a bug class in peer projects, each one tested):

- prompt = the chat template over every turn before the final assistant turn, with the generation
  prompt (``<|im_start|>assistant\\n`` for ChatML), tokenized without adding special tokens, so a
  template that writes BOS itself never gets a second one; a BOS is prepended only when the tokenizer
  adds one by default and the template did not write it.
- completion = the final assistant turn as the template renders it, cut right after the end-of-turn
  token, which therefore appears exactly once (whatever the template emits after it, e.g. ChatML's
  trailing newline, is never trained on: generation stops at the end-of-turn token). A template that
  writes no end-of-turn token gets one appended.
- prompt and completion are tokenized separately and concatenated, so no template tag can leak into
  the completion and the completion mask is exact.
- truncation: the prompt is cut from the left to ``max_prompt_length`` (a BOS the tokenizer adds
  stays in front: the model never sees a sequence without it), then completions from the right to fit
  ``max_length``; a pair whose completion would vanish is dropped. Every cut and drop is counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefopt.data.registry import DataError


@dataclass
class TokenizeStats:
    counts: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def end_of_turn_token(tokenizer, override: str | None = None) -> str:
    token = override or tokenizer.eos_token
    if not token:
        raise DataError("the tokenizer has no eos_token; set model.eot_token to the end-of-turn token")
    return token


def render_prompt(tokenizer, prompt: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer, prompt: list[dict[str, str]], completion: str, eot: str,
                      prompt_text: str | None = None, *, row: int = -1, field_name: str = "completion") -> str:
    prompt_text = prompt_text if prompt_text is not None else render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": completion}], tokenize=False
    )
    if not full.startswith(prompt_text):
        raise DataError(
            f"row {row}: the chat template renders the {field_name} conversation with a different prefix "
            "than the prompt alone, so the completion cannot be separated; use a template whose "
            "generation prompt is a prefix of the rendered assistant turn"
        )
    text = full[len(prompt_text):]
    # Search for the end-of-turn token after the answer, so an answer that quotes it is not cut short;
    # a template that rewrites the content (e.g. trims it) falls back to the first one.
    at = text.find(completion) if completion else -1
    end = text.find(eot, at + len(completion) if at >= 0 else 0)
    return text[: end + len(eot)] if end >= 0 else text + eot


def truncate_prompt(tokenizer, ids: list[int], max_prompt_length: int) -> list[int]:
    """Keep the last ``max_prompt_length`` tokens (the question nearest the answer), and a leading BOS."""
    bos = tokenizer.bos_token_id
    if ids and bos is not None and getattr(tokenizer, "add_bos_token", False) and ids[0] == bos:
        return [bos] + ids[len(ids) - (max_prompt_length - 1):]
    return ids[-max_prompt_length:]


def prompt_token_ids(tokenizer, prompt_text: str) -> list[int]:
    ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def completion_token_ids(tokenizer, completion_text: str) -> list[int]:
    return tokenizer(completion_text, add_special_tokens=False).input_ids


@dataclass
class EncodeSettings:
    max_length: int
    max_prompt_length: int
    eot_token: str | None = None


def encode_rows(rows: list[dict[str, Any]], tokenizer, settings: EncodeSettings, kind: str,
                stats: TokenizeStats | None = None) -> list[dict[str, Any]]:
    """Tokenize normalized rows (see ``prefopt.data.registry``) into id lists.

    Paired rows become ``{"prompt_ids", "chosen_ids", "rejected_ids"}``; sft rows
    ``{"prompt_ids", "chosen_ids"}``; unpaired ``{"prompt_ids", "completion_ids", "desirable"}``.
    The row's original index is kept in ``"index"`` so errors and analyses can point back at it.
    """
    if settings.max_prompt_length >= settings.max_length:
        raise DataError(
            f"dataset.max_prompt_length={settings.max_prompt_length} must be smaller than "
            f"dataset.max_length={settings.max_length}, or no completion token would fit"
        )
    stats = stats or TokenizeStats()
    eot = end_of_turn_token(tokenizer, settings.eot_token)
    completion_keys = {"paired": ("chosen", "rejected"), "sft": ("chosen",), "unpaired": ("completion",)}[kind]
    encoded = []
    for index, row in enumerate(rows):
        prompt_text = render_prompt(tokenizer, row["prompt"])
        prompt_ids = prompt_token_ids(tokenizer, prompt_text)
        completions = {
            key: completion_token_ids(
                tokenizer, render_completion(tokenizer, row["prompt"], row[key], eot, prompt_text,
                                             row=row.get("index", index), field_name=key)
            )
            for key in completion_keys
        }
        if len(prompt_ids) > settings.max_prompt_length:
            prompt_ids = truncate_prompt(tokenizer, prompt_ids, settings.max_prompt_length)
            stats.counts["truncated_prompt"] += 1
        room = settings.max_length - len(prompt_ids)
        for key, ids in completions.items():
            if len(ids) > room:
                completions[key] = ids[:room]
                stats.counts[f"truncated_{key}"] += 1
        if any(len(ids) == 0 for ids in completions.values()):
            stats.counts["dropped_completion_vanished"] += 1
            continue
        out = {"index": row.get("index", index), "prompt_ids": prompt_ids}
        for key, ids in completions.items():
            out[f"{key}_ids"] = ids
        if kind == "unpaired":
            out["desirable"] = bool(row["desirable"])
        encoded.append(out)
    stats.counts["rows_in"] += len(rows)
    stats.counts["rows_kept"] += len(encoded)
    return encoded
