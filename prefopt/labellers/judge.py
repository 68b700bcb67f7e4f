"""``labeller=judge``: any configured judge (``labeller.judge``: an OpenAI-compatible endpoint or a local HF
chat model) labels the samples, by grading each (``labeller.judge_mode=score``, 1-10) or by comparing two
(``pairwise``).

The prompts are prefopt's own, in the bracket format FastChat made common ("[[7]]", "[[A]]"/"[[B]]"/"[[C]]"),
so the parsers of ``prefopt.judges.prompts`` read the replies. A pairwise comparison is asked in both orders
(judges favour a position); the two verdicts must agree, otherwise the pair is a tie and is dropped. Replies
are cached like every judge's, so a resumed or repeated round pays for no judgment twice. An unreachable
judge stops the run with this labeller named (the rounds already written are kept).
"""

from __future__ import annotations

from prefopt.errors import ConfigError
from prefopt.judges import build_judge
from prefopt.judges.base import JudgeError
from prefopt.judges.prompts import parse_rating, parse_verdict
from prefopt.labellers import Labeller, LabellerError, register_labeller

SCORE_SYSTEM = ("You are a careful evaluator. Rate how well the assistant's answer serves the user's request, "
                "on a scale of 1 to 10. Reply with a one-sentence reason, then the rating as [[rating]], "
                "for example: Rating: [[6]].")
PAIR_SYSTEM = ("You are a careful evaluator. Two assistants answered the same user request. Decide which answer "
               "serves the request better; ignore their order and length. Reply with a one-sentence reason, "
               "then [[A]] if assistant A is better, [[B]] if assistant B is better, or [[C]] for a tie.")


def score_messages(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SCORE_SYSTEM},
            {"role": "user", "content": f"[Question]\n{prompt}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                                        "[The End of Assistant's Answer]"}]


def pair_messages(prompt: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PAIR_SYSTEM},
            {"role": "user", "content": f"[User Question]\n{prompt}\n\n"
                                        f"[The Start of Assistant A's Answer]\n{answer_a}\n"
                                        "[The End of Assistant A's Answer]\n\n"
                                        f"[The Start of Assistant B's Answer]\n{answer_b}\n"
                                        "[The End of Assistant B's Answer]"}]


@register_labeller("judge")
class JudgeLabeller(Labeller):
    def __init__(self, judge, pairwise: bool):
        super().__init__()
        self.judge = judge
        self.pairwise = pairwise

    @classmethod
    def from_config(cls, lcfg, bcfg):
        mode = lcfg.judge_mode
        if mode not in ("score", "pairwise"):
            raise ConfigError(f"labeller.judge_mode={mode!r}: must be score or pairwise")
        jcfg = lcfg.get("judge")
        if jcfg is None or jcfg.kind == "none":
            raise ConfigError("labeller.judge.kind: labeller=judge needs a judge (labeller.judge.kind=http with "
                              "labeller.judge.base_url and labeller.judge.model, or kind=local)")
        return cls(build_judge(jcfg), pairwise=mode == "pairwise")

    def _ask(self, requests):
        before = self.judge.calls
        try:
            verdicts = self.judge.judge_many(requests)
        except JudgeError as err:
            raise LabellerError(f"labeller=judge ({self.judge.identity}): {err}") from None
        self.costs.calls += self.judge.calls - before
        return [v.value for v in verdicts]

    def score(self, prompts, completions):
        requests = [(score_messages(p, c), parse_rating) for p, c in zip(prompts, completions, strict=True)]
        return self.timed(self._ask, requests, labels=len(requests))

    def compare(self, prompts, first, second):
        forward = [(pair_messages(p, a, b), parse_verdict) for p, a, b in zip(prompts, first, second, strict=True)]
        backward = [(pair_messages(p, b, a), parse_verdict) for p, a, b in zip(prompts, first, second, strict=True)]
        verdicts = self.timed(self._ask, forward + backward, labels=len(forward))
        n = len(forward)
        winners = []
        for there, back in zip(verdicts[:n], verdicts[n:], strict=True):
            # Read both in the order (first, second): "A" on the way there and "B" on the way back both mean first.
            a = {"A": 0, "B": 1}.get(there)
            b = {"B": 0, "A": 1}.get(back)
            winners.append(a if a is not None and a == b else None)
        return winners
