"""``labeller=reward_model``: a local Hugging Face sequence-classification model scores each completion
(``labeller.path``: a directory or hub id whose config names a ``*ForSequenceClassification`` architecture).

The score is the logit of ``labeller.label_index`` (0 for the usual one-logit reward models). The conversation
is rendered with the reward model's own chat template when its tokenizer has one, else as
"prompt\\n\\ncompletion". A path that is not a sequence classifier is refused when the run is set up,
before any policy loads.
"""

from __future__ import annotations

import torch

from prefopt.errors import ConfigError
from prefopt.labellers import Labeller, register_labeller


@register_labeller("reward_model")
class RewardModelLabeller(Labeller):
    pairwise = False

    def __init__(self, path: str, label_index: int = 0, batch_size: int = 8, max_length: int = 1024):
        super().__init__()
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"labeller.path={path!r}: cannot read a model config there ({err})") from None
        architectures = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ConfigError(f"labeller.path={path!r}: not a sequence-classification model (architectures: "
                              f"{', '.join(architectures) or 'none'}); labeller=reward_model needs a "
                              "*ForSequenceClassification checkpoint")
        if not 0 <= label_index < config.num_labels:
            raise ConfigError(f"labeller.label_index={label_index}: the model has {config.num_labels} labels")
        self.path, self.label_index, self.batch_size, self.max_length = path, label_index, batch_size, max_length
        self._model = self._tokenizer = None

    @classmethod
    def from_config(cls, lcfg, bcfg):
        if not lcfg.get("path"):
            raise ConfigError("labeller.path: labeller=reward_model needs the reward model's directory or hub id")
        if lcfg.batch_size < 1:
            raise ConfigError(f"labeller.batch_size={lcfg.batch_size}: must be >= 1")
        return cls(lcfg.path, lcfg.label_index, lcfg.batch_size)

    def _load(self):
        if self._model is None:  # loaded on first use: a run that fails earlier never pays for it
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32).eval()
            if self._model.config.pad_token_id is None:
                self._model.config.pad_token_id = self._tokenizer.pad_token_id
        return self._model, self._tokenizer

    def render(self, prompt: str, completion: str) -> str:
        _, tokenizer = self._load()
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": completion}], tokenize=False)
        return f"{prompt}\n\n{completion}"

    @torch.no_grad()
    def _score(self, prompts, completions):
        model, tokenizer = self._load()
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=self.max_length)
            logits = model(**batch).logits.float()
            scores += logits[:, self.label_index].tolist()
        return scores

    def score(self, prompts, completions):
        calls = -(-len(completions) // self.batch_size)
        return self.timed(self._score, list(prompts), list(completions), labels=len(completions), calls=calls)
