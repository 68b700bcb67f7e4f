"""UltraFeedback: the ``HuggingFaceH4/ultrafeedback_binarized`` pairs, and raw ``openbmb/UltraFeedback``
binarized here the way Zephyr did it."""

from __future__ import annotations

import math
import random

from prefopt.data.registry import (
    DataError,
    check_options,
    count_skip,
    no_options,
    parse_rows,
    read_table,
    register_dataset,
    require_messages,
    require_str,
    split_final_assistant,
)

H4_BINARIZED = "HuggingFaceH4/ultrafeedback_binarized"
RAW = "openbmb/UltraFeedback"


@register_dataset("ultrafeedback_binarized", kind="paired", default_path=H4_BINARIZED)
def load_ultrafeedback_binarized(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{prompt: str, chosen: [messages], rejected: [messages], score_chosen, score_rejected}``;
    hub splits ``train_prefs``/``test_prefs``. The prompt is every turn of ``chosen`` before its final
    assistant turn (so multi-turn conversations keep their history); chosen and rejected must share it."""
    no_options("ultrafeedback_binarized", options)

    def parse(i: int, row: dict) -> dict:
        require_str(row, "prompt", i)
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"row {i}: missing field {key!r}")
        chosen_prompt, chosen = split_final_assistant(require_messages(row["chosen"], i, "chosen"), i, "chosen")
        rejected_prompt, rejected = split_final_assistant(
            require_messages(row["rejected"], i, "rejected"), i, "rejected")
        if chosen_prompt != rejected_prompt:
            raise DataError(f"row {i}: chosen and rejected have different conversation histories")
        if not chosen_prompt:
            raise DataError(f"row {i}: chosen has no user turn before the assistant's answer")
        return {
            "index": i,
            "prompt": chosen_prompt,
            "chosen": chosen,
            "rejected": rejected,
            "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected"),
            "prompt_id": row.get("prompt_id"),
        }

    return parse_rows(read_table(path or H4_BINARIZED, split), parse)


RAW_OPTIONS = {
    # Which number ranks the completions: a numeric key of each completion (fine-grained_score is the
    # mean of the four GPT-4 aspect ratings, what H4's binarization settled on; overall_score is the
    # critique score Zephyr first used), or mean_rating to average ``annotations.*.Rating`` here.
    "score_key": "fine-grained_score",
    # random: a seeded random one of the other completions (Zephyr); lowest: the worst-rated one.
    "rejected": "random",
    # allow: the rejected may score the same as the chosen (as in Zephyr; drop those later with
    # dataset.filters=[ties]); exclude: draw the rejected only among strictly lower scores.
    "ties": "allow",
    "seed": 42,
}


def _score(completion: dict, key: str) -> float | None:
    if key == "mean_rating":
        annotations = completion.get("annotations")
        if not isinstance(annotations, dict):
            return None
        ratings = []
        for aspect in annotations.values():
            rating = aspect.get("Rating") if isinstance(aspect, dict) else None
            try:
                ratings.append(float(rating))
            except (TypeError, ValueError):
                continue  # "N/A" ratings are left out of the mean
        return sum(ratings) / len(ratings) if ratings else None
    value = completion.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        value = float(value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@register_dataset("ultrafeedback_raw", kind="paired", default_path=RAW)
def load_ultrafeedback_raw(path: str | None, split: str, **options) -> list[dict]:
    """Raw UltraFeedback rows ``{instruction: str, completions: [{model, response, overall_score,
    fine-grained_score, annotations}, ...]}`` (4 per prompt; hub split ``train``), binarized as Zephyr did:
    chosen = the highest score (the first on a tie at the top), rejected = a random other completion
    drawn with ``random.Random(f"{seed}:{row}")`` so it does not depend on row order or process.
    Options: ``score_key``, ``rejected`` (random | lowest), ``ties`` (allow | exclude), ``seed``.
    Completions without a usable score are left out (counted ``completions_unscored``); prompts left with
    fewer than two, or with no strictly lower one under ``ties=exclude``, are skipped and counted."""
    opts = check_options("ultrafeedback_raw", options, RAW_OPTIONS)
    if opts["rejected"] not in ("random", "lowest"):
        raise DataError(f"dataset.options.rejected={opts['rejected']!r}: must be random or lowest")
    if opts["ties"] not in ("allow", "exclude"):
        raise DataError(f"dataset.options.ties={opts['ties']!r}: must be allow or exclude")

    def parse(i: int, row: dict) -> dict | None:
        instruction = require_str(row, "instruction", i)
        completions = row.get("completions")
        if not isinstance(completions, list):
            raise DataError(f"row {i}: field 'completions' must be a list of completions, "
                            f"got {type(completions).__name__}")
        scored = []
        for j, completion in enumerate(completions):
            if not isinstance(completion, dict):
                raise DataError(f"row {i}: completions[{j}] must be an object")
            response = completion.get("response")
            if not isinstance(response, str):
                raise DataError(f"row {i}: completions[{j}].response must be a string, got {type(response).__name__}")
            score = _score(completion, opts["score_key"])
            if score is None:
                count_skip("completions_unscored")
                continue
            scored.append((score, j, response, completion.get("model")))
        if len(scored) < 2:
            count_skip("skipped_fewer_than_two_scored")
            return None
        best = max(scored, key=lambda c: (c[0], -c[1]))  # the first of the top scores
        others = [c for c in scored if c[1] != best[1]]
        if opts["ties"] == "exclude":
            others = [c for c in others if c[0] < best[0]]
            if not others:
                count_skip("skipped_all_tied")
                return None
        if opts["rejected"] == "lowest":
            worst = min(c[0] for c in others)
            rejected = next(c for c in others if c[0] == worst)
        else:
            rejected = random.Random(f"{opts['seed']}:{i}").choice(others)
        return {
            "index": i,
            "prompt": [{"role": "user", "content": instruction}],
            "chosen": best[2],
            "rejected": rejected[2],
            "score_chosen": best[0],
            "score_rejected": rejected[0],
            "chosen_model": best[3],
            "rejected_model": rejected[3],
        }

    return parse_rows(read_table(path or RAW, split), parse)
