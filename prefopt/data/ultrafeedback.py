"""UltraFeedback binarized in the ``HuggingFaceH4/ultrafeedback_binarized`` schema."""

from __future__ import annotations

from prefopt.data.registry import (
    DataError,
    read_table,
    register_dataset,
    require_messages,
    require_str,
    split_final_assistant,
)


@register_dataset("ultrafeedback_binarized", kind="paired", default_path="HuggingFaceH4/ultrafeedback_binarized")
def load_ultrafeedback_binarized(path: str | None, split: str, **options) -> list[dict]:
    """Rows ``{prompt: str, chosen: [messages], rejected: [messages], score_chosen, score_rejected}``;
    hub splits ``train_prefs``/``test_prefs``. The prompt is every turn of ``chosen`` before its final
    assistant turn (so multi-turn conversations keep their history); chosen and rejected must share it."""
    if options:
        raise DataError(f"dataset.options: ultrafeedback_binarized takes no options, got {sorted(options)}")
    rows = read_table(path or "HuggingFaceH4/ultrafeedback_binarized", split)
    out = []
    for i, row in enumerate(rows):
        require_str(row, "prompt", i)
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"row {i}: missing field {key!r}")
        chosen_prompt, chosen = split_final_assistant(require_messages(row["chosen"], i, "chosen"), i, "chosen")
        rejected_prompt, rejected = split_final_assistant(require_messages(row["rejected"], i, "rejected"), i, "rejected")
        if chosen_prompt != rejected_prompt:
            raise DataError(f"row {i}: chosen and rejected have different conversation histories")
        if not chosen_prompt:
            raise DataError(f"row {i}: chosen has no user turn before the assistant's answer")
        out.append({
            "index": i,
            "prompt": chosen_prompt,
            "chosen": chosen,
            "rejected": rejected,
            "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected"),
            "prompt_id": row.get("prompt_id"),
        })
    return out
