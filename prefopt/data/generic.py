"""Any table with a column mapping (``dataset.options``): preference pairs (``dataset=generic``) or single
completions labelled desirable or not (``dataset=unpaired``, KTO/BCO's input, TRL's unpaired schema)."""

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

PAIRED_OPTIONS = {
    # Column names; prompt may be null when chosen/rejected are whole conversations that hold it.
    "prompt": "prompt",
    "chosen": "chosen",
    "rejected": "rejected",
    # An optional column with a system message, prepended to a string prompt.
    "system": None,
    "score_chosen": None,
    "score_rejected": None,
}
UNPAIRED_OPTIONS = {
    # Column names, TRL's unpaired-preference schema by default.
    "prompt": "prompt",
    "completion": "completion",
    "label": "label",
}
UNPAIRED_DEFAULT = "trl-lib/kto-mix-14k"


def require_columns(row: dict, i: int, opts: dict, keys: tuple[str, ...]) -> None:
    """Row i holds the column each of `keys` maps to."""
    for key in keys:
        if opts[key] not in row:
            raise DataError(f"row {i}: missing field {opts[key]!r} (dataset.options.{key})")


def check_history(history: list[dict] | None, prompt: list[dict], i: int, field: str, prompt_field: str) -> None:
    """A completion given as a whole conversation must hold the row's prompt as its history."""
    if history is not None and history != prompt:
        raise DataError(f"row {i}: the history inside {field} differs from {prompt_field}")


@register_dataset("generic", kind="paired")
def load_generic(path: str | None, split: str, **options) -> list[dict]:
    """Any jsonl/json/parquet table (or hub dataset) of pairs; ``dataset.options`` maps its columns.
    The prompt is a string (one user turn) or a message list ending with the user; chosen/rejected are
    strings, one assistant message, or whole conversations ending with the assistant whose history must
    equal the prompt (and each other). With ``prompt: null`` the history inside chosen is the prompt."""
    opts = check_options("generic", options, PAIRED_OPTIONS)
    if not path:
        raise DataError("dataset.path: the generic dataset has no default; point it at a file or hub id")
    required = tuple(key for key in ("prompt", "chosen", "rejected") if opts[key] is not None)

    def parse(i: int, row: dict) -> dict:
        require_columns(row, i, opts, required)
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
        check_history(history, prompt, i, opts["chosen"], opts["prompt"])
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


@register_dataset("unpaired", kind="unpaired", default_path=UNPAIRED_DEFAULT)
def load_unpaired(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{prompt, completion, label}`` (TRL's unpaired schema, e.g. ``trl-lib/kto-mix-14k``): the
    prompt a string or messages ending with the user, the completion a string, one assistant message
    or a conversation ending with the assistant (whose history must equal the prompt), and the label a
    boolean (true = desirable; 0/1 accepted). ``dataset.options`` maps other column names."""
    opts = check_options("unpaired", options, UNPAIRED_OPTIONS)

    def parse(i: int, row: dict) -> dict:
        require_columns(row, i, opts, ("prompt", "completion", "label"))
        prompt = as_prompt(row[opts["prompt"]], i, opts["prompt"])
        history, answer = as_completion(row[opts["completion"]], i, opts["completion"])
        check_history(history, prompt, i, opts["completion"], opts["prompt"])
        label = row[opts["label"]]
        if isinstance(label, bool) or label in (0, 1):
            label = bool(label)
        else:
            raise DataError(f"row {i}: field {opts['label']!r} must be true/false (or 0/1), got {label!r}")
        return {"index": i, "prompt": prompt, "completion": answer, "desirable": label}

    return parse_rows(read_table(path or UNPAIRED_DEFAULT, split), parse)
