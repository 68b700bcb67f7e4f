"""AlpacaEval's files by path or from the hub dataset tatsu-lab/alpaca_eval (served here through a patched
hf_hub_download from local files of the same schema: this machine is offline), and the benchmarks' default
data: MT-Bench and AlpacaEval name their hub ids."""

from __future__ import annotations

import json

import pytest

from prefopt.benchmarks.alpaca_data import (
    AE1_SET,
    AE2_SET,
    HUB_REPO,
    load_instructions,
    load_reference_outputs,
    resolve,
)
from prefopt.data.registry import DataError
from tests.conftest import compose


def serve_hub(monkeypatch, files: dict):
    """huggingface_hub.hf_hub_download answering from local files; anything else is 'offline'."""
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, repo_type=None, **kwargs):
        asked.append((repo_id, filename, repo_type))
        if filename not in files:
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id}/{filename}: offline")
        return str(files[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return asked


def test_benchmarks_default_to_their_hub_ids():
    mt = compose(["benchmark=mt_bench"]).benchmark
    assert mt.prompts == "HuggingFaceH4/mt_bench_prompts" and mt.reference_answers is None
    ae = compose(["benchmark=alpaca_eval"]).benchmark
    assert ae.prompts == ae.reference_outputs == HUB_REPO
    assert ae.annotator == "weighted_alpaca_eval_gpt4_turbo" and ae.lc_difficulties is None


def test_the_hub_set_and_a_local_copy_give_the_same_instructions(shared_data, monkeypatch):
    local = shared_data / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
    asked = serve_hub(monkeypatch, {AE2_SET: local, AE1_SET: shared_data / "alpaca_eval" /
                                    "text_davinci_003_model_outputs.json"})
    from_hub = load_instructions(HUB_REPO, -1)
    assert asked == [(HUB_REPO, AE2_SET, "dataset")]
    assert from_hub == load_instructions(str(local), -1) == [r["instruction"] for r in json.loads(local.read_text())]
    assert len(from_hub) == 805 and len(asked) == 1  # the local path asked the hub nothing
    outputs, generator = load_reference_outputs(HUB_REPO, from_hub[:5])
    assert generator == "gpt4_1106_preview" and len(outputs) == 5
    assert resolve(f"{HUB_REPO}/{AE1_SET}", "benchmark.prompts").name == "text_davinci_003_model_outputs.json"
    assert asked[-1] == (HUB_REPO, AE1_SET, "dataset")


def test_bad_values_are_one_clear_error(tmp_path, monkeypatch):
    serve_hub(monkeypatch, {})
    with pytest.raises(DataError, match=rf"benchmark.prompts: could not get {AE2_SET} from the hub dataset "
                                        rf"{HUB_REPO} \(LocalEntryNotFoundError.*Offline\? Point benchmark.prompts"):
        load_instructions(HUB_REPO, -1)
    with pytest.raises(DataError, match=r"benchmark.prompts='/no/such.json': file not found"):
        load_instructions("/no/such.json", -1)
    rows = tmp_path / "outputs.json"
    rows.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b"}]))
    with pytest.raises(DataError, match=r"benchmark.reference_outputs=.*row 1 needs 'instruction' and 'output'"):
        load_reference_outputs(str(rows), ["a", "b"])
    rows.write_text(json.dumps([{"instruction": "a", "output": "x"}]))
    with pytest.raises(DataError, match=r"no output for instruction rows \[1\]"):
        load_reference_outputs(str(rows), ["a", "b"])
