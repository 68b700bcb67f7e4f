"""The built-in sentiment prompts: 256 held-out prompts the project wrote (experiments/make_sentiment_pairs.py),
none of them a training prompt, and the asset is what the script writes."""

from __future__ import annotations

import json
import subprocess
import sys

from prefopt.data.sentiment import PAIRS, PROMPTS, heldout_prompts
from tests.conftest import ROOT


def test_heldout_prompts_are_many_distinct_and_unseen_in_training():
    held = heldout_prompts()
    assert len(held) >= 256 and len(set(held)) == len(held)
    trained = {json.loads(line)["prompt"] for line in PAIRS.read_text().splitlines() if line.strip()}
    trained |= set(json.loads(PROMPTS.read_text())["train"])
    assert not set(held) & trained


def test_the_asset_is_what_the_script_writes(tmp_path):
    """--prompts-only writes the prompt file alone; it must equal the packaged one byte for byte. The first 48
    held-out prompts (the default benchmark.num_prompts) are the ones the benchmark always ran."""
    (tmp_path / "sentiment_pairs.jsonl").write_text(PAIRS.read_text())
    subprocess.run([sys.executable, "experiments/make_sentiment_pairs.py", "--prompts-only", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "sentiment_prompts.json").read_text() == PROMPTS.read_text()
    first = heldout_prompts()[:4]
    assert first == ["Write two sentences about a Sunday afternoon.",
                     "Tell me briefly how you feel about a Sunday afternoon.",
                     "Tell me briefly how you feel about the city bus.",
                     "Describe the city bus in one or two sentences."]
