"""ShareGPT-style preference pairs as LLaMA-Factory stores them (``formatting: sharegpt, ranking: true``)."""

from __future__ import annotations

from prefopt.data.registry import DataError, check_options, parse_rows, read_table, register_dataset

# LLaMA-Factory's dataset_info.json lets each dataset rename its columns and tags; so do these options.
OPTIONS = {
    "messages": "conversations",
    "chosen": "chosen",
    "rejected": "rejected",
    "system": "system",
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}


@register_dataset("sharegpt", kind="paired")
def load_sharegpt(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{conversations: [{from, value}, ...], chosen: {from: gpt, value}, rejected: {from: gpt, value},
    system?: str}``: the conversation must end with a human turn; chosen and rejected are the competing
    answers to it. Tags ``human``/``user`` -> user, ``gpt``/``assistant`` -> assistant, ``system`` -> system;
    other tags (function calls, observations) are an error naming the row. Column and tag names are
    options (see ``OPTIONS``). Needs ``dataset.path`` (a file, e.g. LLaMA-Factory's dpo_en_demo.json)."""
    opts = check_options("sharegpt", options, OPTIONS)
    if not path:
        raise DataError("dataset.path: the sharegpt dataset has no default; point it at a json/jsonl file")
    roles = {opts["user_tag"]: "user", "user": "user", opts["assistant_tag"]: "assistant",
             "assistant": "assistant", opts["system_tag"]: "system"}
    role_tag, content_tag = opts["role_tag"], opts["content_tag"]

    def message(value, i: int, field: str) -> dict[str, str]:
        if not isinstance(value, dict) or role_tag not in value or content_tag not in value:
            raise DataError(f"row {i}: {field} must be an object with {role_tag!r} and {content_tag!r}")
        if value[role_tag] not in roles:
            raise DataError(f"row {i}: {field}.{role_tag}={value[role_tag]!r} is not one of {sorted(roles)}")
        if not isinstance(value[content_tag], str):
            raise DataError(f"row {i}: {field}.{content_tag} must be a string, got {type(value[content_tag]).__name__}")
        return {"role": roles[value[role_tag]], "content": value[content_tag]}

    def parse(i: int, row: dict) -> dict:
        for key in (opts["messages"], opts["chosen"], opts["rejected"]):
            if key not in row:
                raise DataError(f"row {i}: missing field {key!r}")
        turns = row[opts["messages"]]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"row {i}: field {opts['messages']!r} must be a non-empty list of turns")
        prompt = [message(t, i, f"{opts['messages']}[{j}]") for j, t in enumerate(turns)]
        if prompt[-1]["role"] != "user":
            raise DataError(f"row {i}: {opts['messages']} must end with a {opts['user_tag']} turn, "
                            f"ends with {prompt[-1]['role']}")
        system = row.get(opts["system"])
        if system is not None and prompt[0]["role"] != "system":
            if not isinstance(system, str):
                raise DataError(f"row {i}: field {opts['system']!r} must be a string")
            if system:
                prompt.insert(0, {"role": "system", "content": system})
        answers = {}
        for key in ("chosen", "rejected"):
            answer = message(row[opts[key]], i, opts[key])
            if answer["role"] != "assistant":
                raise DataError(f"row {i}: {opts[key]} must be an {opts['assistant_tag']} turn")
            answers[key] = answer["content"]
        return {"index": i, "prompt": prompt, **answers}

    return parse_rows(read_table(path, split), parse)
