"""Anthropic HH-RLHF: ``chosen``/``rejected`` transcripts of ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` turns."""

from __future__ import annotations

import re

from prefopt.data.registry import (
    DataError,
    check_options,
    count_skip,
    parse_rows,
    read_table,
    register_dataset,
    require_str,
)

HUB_ID = "Anthropic/hh-rlhf"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}
OPTIONS = {
    # skip: a pair whose transcripts do not share every turn before the final answer is counted
    # (skipped_prompt_mismatch) and dropped; error: it stops the run naming the row.
    "mismatched": "skip",
}


def parse_transcript(text: str, row: int, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{user: a}, {assistant: b}]``, contents stripped.
    Roles are kept as written: the public files hold a few consecutive same-role turns."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError(f"row {row}: field {field!r} must start with '\\n\\nHuman:', starts with {parts[0][:40]!r}")
    if len(parts) < 3:
        raise DataError(f"row {row}: field {field!r} has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return [{"role": _ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2],
                                                                                          strict=True)]


@register_dataset("hh_rlhf", kind="paired", default_path=HUB_ID)
def load_hh_rlhf(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{chosen: str, rejected: str}``, each a whole transcript (hub ``Anthropic/hh-rlhf``, splits
    ``train``/``test``; a local ``.jsonl.gz`` works as is). The prompt is every turn the two transcripts
    share before their final assistant turn; chosen/rejected are those final answers. Each transcript
    must end with the assistant. Option ``mismatched``: skip (default, counted) | error."""
    opts = check_options("hh_rlhf", options, OPTIONS)
    if opts["mismatched"] not in ("skip", "error"):
        raise DataError(f"dataset.options.mismatched={opts['mismatched']!r}: must be skip or error")

    def parse(i: int, row: dict) -> dict | None:
        chosen = parse_transcript(require_str(row, "chosen", i), i, "chosen")
        rejected = parse_transcript(require_str(row, "rejected", i), i, "rejected")
        for field, turns in (("chosen", chosen), ("rejected", rejected)):
            if turns[-1]["role"] != "assistant":
                raise DataError(f"row {i}: {field} must end with an assistant turn, ends with a human turn")
        if chosen[:-1] != rejected[:-1]:
            # In the public files a handful of chosen transcripts run on with an invented extra turn.
            if opts["mismatched"] == "error":
                raise DataError(f"row {i}: chosen and rejected do not share the turns before the final answer")
            count_skip("skipped_prompt_mismatch")
            return None
        if not chosen[:-1]:
            raise DataError(f"row {i}: chosen has no human turn before the assistant's answer")
        return {"index": i, "prompt": chosen[:-1], "chosen": chosen[-1]["content"],
                "rejected": rejected[-1]["content"]}

    return parse_rows(read_table(path or HUB_ID, split), parse)
