"""A local Hugging Face chat model as the judge (greedy decoding, so a rerun gives the same verdict).

Useful offline and in tests (``judge.model=tiny``); a 135M model is a poor judge, and its malformed
replies are counted like any other judge's.
"""

from __future__ import annotations

import torch

from prefopt.judges.base import Judge


class LocalJudge(Judge):
    def __init__(self, model: str, *, max_new_tokens: int = 256, dtype: str = "auto",
                 trust_remote_code: bool = False, cache_path=None, parse_retries: int = 2):
        super().__init__(cache_path, parse_retries)
        if not model:
            raise ValueError("judge.model: required for judge=local (a hub id, a path, or smollm2-135m/tiny)")
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._tokenizer = None
        self.identity = f"local|{model}|greedy|max={max_new_tokens}"

    def _load(self):
        # Deferred so that a rerun answered entirely from the cache never loads the model.
        if self._model is None:
            from prefopt.models import load_model, load_tokenizer

            self._tokenizer = load_tokenizer(self.model_name, None, self.trust_remote_code)
            self._model = load_model(self.model_name, self.dtype, self.trust_remote_code).eval()
        return self._model, self._tokenizer

    @torch.no_grad()
    def _complete(self, messages):
        model, tokenizer = self._load()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(next(model.parameters()).device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
