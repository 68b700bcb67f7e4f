"""The AlpacaEval files: the 805 instructions with a reference model's outputs, and the LC win rate's
instruction difficulties, read from a local copy by path or from the hub dataset ``tatsu-lab/alpaca_eval``.

A value naming the hub dataset is ``tatsu-lab/alpaca_eval`` (its AlpacaEval 2 set,
``alpaca_eval_gpt4_baseline.json``: the instructions with gpt4_1106_preview's outputs, the leaderboard's
baseline) or ``tatsu-lab/alpaca_eval/<file>`` for another file of that dataset (``alpaca_eval.json`` is the
AlpacaEval 1 set, with text_davinci_003's outputs). The files are fetched with ``hf_hub_download`` (the
dataset's loading script is not run); anything else is a local JSON/JSONL path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prefopt.data.registry import DataError, read_table

HUB_REPO = "tatsu-lab/alpaca_eval"
AE2_SET = "alpaca_eval_gpt4_baseline.json"
AE1_SET = "alpaca_eval.json"
# The LC win rate's regression data: per-instruction difficulty and the annotations of two length-gamed
# baselines (alpaca_eval.metrics.glm_winrate reads it from the hub on every call; it is not in the package).
LC_DIFFICULTIES = "df_gamed.csv"


def hub_file(filename: str, where: str) -> Path:
    """A file of the hub dataset ``tatsu-lab/alpaca_eval`` (downloaded once into the hub cache)."""
    import huggingface_hub

    # Without a network the hub client logs each of its retries; the one error below says it all.
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=HUB_REPO, filename=filename, repo_type="dataset"))
    except Exception as err:  # offline, missing file, auth: the hub raises many types
        raise DataError(f"{where}: could not get {filename} from the hub dataset {HUB_REPO} "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:160]}). Offline? Point {where} "
                        f"at a local copy of {filename}") from err
    finally:
        hub_log.setLevel(level)


def resolve(value: str, where: str, default_file: str = AE2_SET) -> Path:
    """A local path as given, or the named file of the hub dataset (``default_file`` for the bare id)."""
    local = Path(os.path.expanduser(value))
    if local.is_file():
        return local
    if value.rstrip("/") == HUB_REPO:
        return hub_file(default_file, where)
    if value.startswith(HUB_REPO + "/"):
        return hub_file(value[len(HUB_REPO) + 1:], where)
    raise DataError(f"{where}={value!r}: file not found (a local AlpacaEval JSON/JSONL, or the hub dataset "
                    f"{HUB_REPO} or {HUB_REPO}/<file>)")


def read_rows(value: str, where: str, default_file: str = AE2_SET) -> list[dict]:
    """The rows of an AlpacaEval outputs file (``instruction``, ``output``, ``generator``, ``dataset``)."""
    return read_table(str(resolve(value, where, default_file)), where=where)


def load_instructions(value: str, limit: int, where: str = "benchmark.prompts",
                      default_file: str = AE2_SET) -> list[str]:
    out = []
    for i, row in enumerate(read_rows(value, where, default_file)):
        if not (isinstance(row, dict) and isinstance(row.get("instruction"), str)):
            raise DataError(f"{where}={value}: row {i} has no 'instruction' string")
        out.append(row["instruction"])
    return out if limit < 0 else out[:limit]


def load_reference_outputs(value: str | None, instructions: list[str], where: str = "benchmark.reference_outputs",
                           default_file: str = AE2_SET) -> tuple[list[str], str]:
    """The reference output set's output for each instruction, and its generator's name."""
    if not value:
        raise DataError(f"{where}: required (an AlpacaEval outputs JSON, or the hub dataset {HUB_REPO})")
    by_instruction, generators = {}, set()
    for i, row in enumerate(read_rows(value, where, default_file)):
        if not (isinstance(row, dict) and isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str)):
            raise DataError(f"{where}={value}: row {i} needs 'instruction' and 'output' strings")
        by_instruction[row["instruction"]] = row["output"]
        generators.add(str(row.get("generator", "reference_outputs")))
    missing = [i for i, text in enumerate(instructions) if text not in by_instruction]
    if missing:
        raise DataError(f"{where}={value}: no output for instruction rows {missing[:10]}"
                        f"{' ...' if len(missing) > 10 else ''}")
    name = generators.pop() if len(generators) == 1 else "reference_outputs"
    return [by_instruction[text] for text in instructions], name
