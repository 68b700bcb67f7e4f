"""Any table of preference pairs, with a column mapping."""

from __future__ import annotations

from prefopt.data.registry import (
    DataError,
    as_completion,
    as_prompt,
    check_options,
    parse_rows,
    read_table,
    register_dataset,
)

OPTIONS = {
    # Column names; prompt may be null when chosen/rejected are whole conversations that hold it.
    "prompt": "prompt",
    "chosen": "chosen",
    "rejected": "rejected",
    # An optional column with a system message, prepended to a string prompt.
    "system": None,
    "score_chosen": None,
    "score_rejected": None,
}


@register_dataset("generic", kind="paired")
def load_generic(path: str | None, split: str, **options) -> list[dict]:
    """Any jsonl/json/parquet table (or hub dataset) of pairs; ``dataset.options`` maps its columns.
    The prompt is a string (one user turn) or a message list ending with the user; chosen/rejected are
    strings, one assistant message, or whole conversations ending with the assistant whose history must
    equal the prompt (and each other). With ``prompt: null`` the history inside chosen is the prompt."""
    opts = check_options("generic", options, OPTIONS)
    if not path:
        raise DataError("dataset.path: the generic dataset has no default; point it at a file or hub id")

    def parse(i: int, row: dict) -> dict:
        for key in ("prompt", "chosen", "rejected"):
            if opts[key] is not None and opts[key] not in row:
                raise DataError(f"row {i}: missing field {opts[key]!r} (dataset.options.{key})")
        prompt = as_prompt(row[opts["prompt"]], i, opts["prompt"]) if opts["prompt"] else None
        histories, answers = {}, {}
        for key in ("chosen", "rejected"):
            histories[key], answers[key] = as_completion(row[opts[key]], i, opts[key])
        if histories["chosen"] != histories["rejected"]:
            raise DataError(f"row {i}: {opts['chosen']} and {opts['rejected']} have different conversation histories")
        history = histories["chosen"]
        if prompt is None:
            if history is None:
                raise DataError(f"row {i}: dataset.options.prompt is null, so {opts['chosen']} must be a "
                                "conversation holding the prompt")
            prompt = history
        elif history is not None and history != prompt:
            raise DataError(f"row {i}: the history inside {opts['chosen']} differs from {opts['prompt']}")
        if opts["system"] and row.get(opts["system"]) and prompt[0]["role"] != "system":
            system = row[opts["system"]]
            if not isinstance(system, str):
                raise DataError(f"row {i}: field {opts['system']!r} must be a string, got {type(system).__name__}")
            prompt = [{"role": "system", "content": system}] + prompt
        out = {"index": i, "prompt": prompt, **answers}
        for key in ("score_chosen", "score_rejected"):
            if opts[key]:
                out[key] = row.get(opts[key])
        return out

    return parse_rows(read_table(path, split), parse)
