"""``trainer.logps_chunk_rows`` reaches every scorer of a run (policy, frozen and precomputed references), and a
run whose heads run over chunks of 16 completion tokens trains like the unchunked run (fp32, model=tiny)."""

from __future__ import annotations

import pytest

from prefopt.train import run
from tests.conftest import TINY, compose, read_metrics


@pytest.mark.parametrize("reference", ["frozen", "precomputed"])
def test_chunked_run_matches_unchunked(tmp_path, reference):
    overrides = TINY + ["trainer.max_steps=3", "trainer.eval_every=0", f"reference={reference}",
                        f"reference.cache_dir={tmp_path / 'reflogps'}"]
    run(compose(overrides), tmp_path / "plain")
    run(compose(overrides + ["trainer.logps_chunk_rows=16"]), tmp_path / "chunked")
    plain, chunked = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "chunked")
    assert [r["split"] for r in plain] == [r["split"] for r in chunked]
    for a, b in zip(plain, chunked, strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["split"], a.get("step"), key)


def test_chunk_rows_reaches_the_scorers(tmp_path, monkeypatch):
    from prefopt.scoring import logps

    seen = []
    original = logps.SequenceScorer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.chunk_rows)

    monkeypatch.setattr(logps.SequenceScorer, "__init__", spy)
    run(compose(TINY + ["trainer.max_steps=1", "trainer.logps_chunk_rows=16"]), tmp_path / "run")
    assert seen and set(seen) == {16}, seen  # the policy's scorer and the frozen reference's


def test_chunk_rows_below_one_is_a_config_error(tmp_path):
    from prefopt.errors import PrefoptError

    with pytest.raises(PrefoptError, match="trainer.logps_chunk_rows=0: must be >= 1"):
        run(compose(TINY + ["trainer.logps_chunk_rows=0"]), tmp_path / "run")
