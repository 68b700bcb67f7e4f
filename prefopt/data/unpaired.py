"""Unpaired preference data: single completions labelled desirable or not (KTO/BCO's input)."""

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
    # Column names, TRL's unpaired-preference schema by default.
    "prompt": "prompt",
    "completion": "completion",
    "label": "label",
}


@register_dataset("unpaired", kind="unpaired", default_path="trl-lib/kto-mix-14k")
def load_unpaired(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{prompt, completion, label}`` (TRL's unpaired schema, e.g. ``trl-lib/kto-mix-14k``): the
    prompt a string or messages ending with the user, the completion a string, one assistant message
    or a conversation ending with the assistant (whose history must equal the prompt), and the label a
    boolean (true = desirable; 0/1 accepted). ``dataset.options`` maps other column names."""
    opts = check_options("unpaired", options, OPTIONS)

    def parse(i: int, row: dict) -> dict:
        for key in ("prompt", "completion", "label"):
            if opts[key] not in row:
                raise DataError(f"row {i}: missing field {opts[key]!r} (dataset.options.{key})")
        prompt = as_prompt(row[opts["prompt"]], i, opts["prompt"])
        history, answer = as_completion(row[opts["completion"]], i, opts["completion"])
        if history is not None and history != prompt:
            raise DataError(f"row {i}: the history inside {opts['completion']} differs from {opts['prompt']}")
        label = row[opts["label"]]
        if isinstance(label, bool) or label in (0, 1):
            label = bool(label)
        else:
            raise DataError(f"row {i}: field {opts['label']!r} must be true/false (or 0/1), got {label!r}")
        return {"index": i, "prompt": prompt, "completion": answer, "desirable": label}

    return parse_rows(read_table(path or "trl-lib/kto-mix-14k", split), parse)
