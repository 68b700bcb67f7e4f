"""UltraChat 200k (``HuggingFaceH4/ultrachat_200k``): the distilled-SFT conversations of Zephyr."""

from __future__ import annotations

from prefopt.data.registry import (
    DataError,
    check_options,
    parse_rows,
    read_table,
    register_dataset,
    require_messages,
)

HUB_ID = "HuggingFaceH4/ultrachat_200k"
OPTIONS = {
    # all: one example per assistant turn, with every earlier turn as its prompt, so each answer of a
    # multi-turn dialogue is trained on exactly once; last: only the final answer.
    "turns": "all",
}


@register_dataset("ultrachat_200k", kind="sft", default_path=HUB_ID)
def load_ultrachat(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{prompt: str, prompt_id: str, messages: [{role, content}, ...]}``; hub splits
    ``train_sft``/``test_sft``. ``messages`` must end with the assistant. Option ``turns``: all (default:
    every assistant turn becomes an example whose prompt is the whole conversation before it) | last."""
    opts = check_options("ultrachat_200k", options, OPTIONS)
    if opts["turns"] not in ("all", "last"):
        raise DataError(f"dataset.options.turns={opts['turns']!r}: must be all or last")

    def parse(i: int, row: dict) -> list[dict]:
        if "messages" not in row:
            raise DataError(f"row {i}: missing field 'messages'")
        messages = require_messages(row["messages"], i, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"row {i}: messages must end with an assistant message, ends with {messages[-1]['role']!r}")
        first_user = next((k for k, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is None:
            raise DataError(f"row {i}: messages has no user turn before the assistant's answer")
        # An assistant turn before any user turn (a scripted greeting) is context, never a target.
        ends = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k > first_user]
        if opts["turns"] == "last":
            ends = ends[-1:]
        return [{"index": i, "turn": k, "prompt": messages[:k], "chosen": messages[k]["content"],
                 "prompt_id": row.get("prompt_id")} for k in ends]

    return parse_rows(read_table(path or HUB_ID, split), parse)
