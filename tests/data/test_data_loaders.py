"""Every dataset loader, on small files written here in the hub schema and on the real public rows in
../shared/data; malformed rows (missing keys, empty strings, conversations not ending with the assistant,
non-string content) give an error naming the row and field, or a counted skip with dataset.bad_rows=skip.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from prefopt.data import DataError, filter_names, get_dataset
from prefopt.data.filters import apply_filters, expand_filters
from prefopt.data.registry import loading

ROOT = Path(__file__).resolve().parents[2]
RAW_SAMPLE = ROOT / "tests" / "fixtures" / "ultrafeedback_raw_sample.jsonl"


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def load(name: str, path: str, split: str = "train", bad_rows: str = "error", **options):
    counts = Counter()
    with loading(counts, bad_rows, name):
        rows = get_dataset(name).fn(path, split, **options)
    return rows, counts


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# --- small files in each hub schema -------------------------------------------------------------------


def test_ultrafeedback_binarized_hub_schema(tmp_path):
    row = {"prompt": "2+2?", "prompt_id": "p0", "score_chosen": 9.0, "score_rejected": 3.0,
           "chosen": msgs(("user", "2+2?"), ("assistant", "4")),
           "rejected": msgs(("user", "2+2?"), ("assistant", "5")),
           "messages": msgs(("user", "2+2?"), ("assistant", "4"))}
    multi = {"prompt": "x", "chosen": msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")),
             "rejected": msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "e"))}
    rows, counts = load("ultrafeedback_binarized", write_jsonl(tmp_path / "uf.jsonl", [row, multi]))
    assert rows[0] == {"index": 0, "prompt": msgs(("user", "2+2?")), "chosen": "4", "rejected": "5",
                       "score_chosen": 9.0, "score_rejected": 3.0, "prompt_id": "p0"}
    assert rows[1]["prompt"] == msgs(("user", "a"), ("assistant", "b"), ("user", "c"))
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("d", "e") and not counts


def test_ultrafeedback_binarized_reads_parquet_and_split_directories(tmp_path):
    import pandas as pd

    row = {"prompt": "q", "chosen": msgs(("user", "q"), ("assistant", "a")),
           "rejected": msgs(("user", "q"), ("assistant", "b"))}
    (tmp_path / "data").mkdir()
    pd.DataFrame([row]).to_parquet(tmp_path / "data" / "train_prefs-00000.parquet")
    write_jsonl(tmp_path / "data" / "test_prefs.jsonl", [row, row])
    train, _ = load("ultrafeedback_binarized", str(tmp_path / "data"), "train_prefs")
    test, _ = load("ultrafeedback_binarized", str(tmp_path / "data"), "test_prefs")
    assert len(train) == 1 and len(test) == 2 and train[0]["chosen"] == "a"
    with pytest.raises(DataError, match="no file for split 'validation'"):
        load("ultrafeedback_binarized", str(tmp_path / "data"), "validation")


def test_ultrafeedback_raw_binarizes_like_zephyr():
    """Sample rows (tests/fixtures/ultrafeedback_raw_sample.jsonl, fine-grained scores):
    0: [8.5, 7.0, 2.0, 4.5] -> chosen 0, rejected one of 1-3;   1: [9, 9, 3, 5] -> chosen 0 (first top);
    2: all 7.0 (ties);   3: [8, 9.5, 1, 1] -> chosen 1;   4: [8, 1.5, 9, 1] -> chosen 2;
    5: [8, 8.5, 1, "N/A"] -> the unscored completion is left out, chosen 1."""
    rows, counts = load("ultrafeedback_raw", str(RAW_SAMPLE))
    assert [r["score_chosen"] for r in rows] == [8.5, 9.0, 7.0, 9.5, 9.0, 8.5]
    assert rows[0]["chosen"].startswith("Start with two balls") and rows[0]["chosen_model"] == "gpt-4"
    assert rows[3]["chosen"].startswith("Merci beaucoup") and rows[4]["chosen"].startswith("11, 13")
    assert all(r["rejected"] != r["chosen"] for r in rows)
    assert rows[5]["rejected"] in ("Eight.", "Six.")  # never the unscored "Many."
    assert counts == {"completions_unscored": 1}
    assert rows[0]["prompt"] == msgs(("user", "Give me a tip for learning to juggle."))
    # Seeded per row: the same draw every time, a different one for another seed.
    again, _ = load("ultrafeedback_raw", str(RAW_SAMPLE))
    assert [r["rejected"] for r in again] == [r["rejected"] for r in rows]
    draws = {tuple(r["rejected"] for r in load("ultrafeedback_raw", str(RAW_SAMPLE), seed=s)[0]) for s in range(8)}
    assert len(draws) > 1


def test_ultrafeedback_raw_options():
    lowest, _ = load("ultrafeedback_raw", str(RAW_SAMPLE), rejected="lowest")
    assert [r["score_rejected"] for r in lowest] == [2.0, 3.0, 7.0, 1.0, 1.0, 1.0]
    assert lowest[3]["rejected"] == "Gracias."  # the first of two lowest
    strict, counts = load("ultrafeedback_raw", str(RAW_SAMPLE), ties="exclude")
    assert len(strict) == 5 and counts["skipped_all_tied"] == 1
    assert all(r["score_rejected"] < r["score_chosen"] for r in strict)
    by_rating, _ = load("ultrafeedback_raw", str(RAW_SAMPLE), score_key="mean_rating")
    assert by_rating[0]["score_chosen"] == 4.0  # round(8.5 / 2) = 4 for both aspects
    with pytest.raises(DataError, match="dataset.options.rejected='worst'"):
        load("ultrafeedback_raw", str(RAW_SAMPLE), rejected="worst")
    with pytest.raises(DataError, match="has no option 'bogus'"):
        load("ultrafeedback_raw", str(RAW_SAMPLE), bogus=1)


def test_hh_rlhf_parses_turns_and_shared_prefix(tmp_path):
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken..."
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: No."
    odd = {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
           "rejected": "\n\nHuman: a\n\nAssistant: x"}
    rows, counts = load("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}, odd]))
    assert rows == [{"index": 0, "prompt": msgs(("user", "Hi there"), ("assistant", "Hello!"), ("user", "Tell me a joke.")),
                     "chosen": "Why did the chicken...", "rejected": "No."}]
    assert counts == {"skipped_prompt_mismatch": 1}
    with pytest.raises(DataError, match="row 1: chosen and rejected do not share"):
        load("hh_rlhf", str(tmp_path / "hh.jsonl"), mismatched="error")


def test_sharegpt_llamafactory_format(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                             {"from": "human", "value": "Bye?"}],
           "chosen": {"from": "gpt", "value": "Goodbye!"}, "rejected": {"from": "gpt", "value": "No."},
           "system": "Be polite."}
    rows, _ = load("sharegpt", write_jsonl(tmp_path / "sg.jsonl", [row]))
    assert rows == [{"index": 0, "prompt": msgs(("system", "Be polite."), ("user", "Hi"), ("assistant", "Hello"),
                                                 ("user", "Bye?")), "chosen": "Goodbye!", "rejected": "No."}]
    renamed = {"msgs": [{"role": "user", "text": "Hi"}], "good": {"role": "assistant", "text": "A"},
               "bad": {"role": "assistant", "text": "B"}}
    rows, _ = load("sharegpt", write_jsonl(tmp_path / "r.jsonl", [renamed]), messages="msgs", chosen="good",
                   rejected="bad", role_tag="role", content_tag="text", user_tag="user", assistant_tag="assistant")
    assert rows[0]["prompt"] == msgs(("user", "Hi")) and rows[0]["chosen"] == "A"


def test_generic_column_mapping_strings_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "Why?", "good": "Because.", "bad": "No.", "sys": "Be kind.", "s1": 2, "s2": 1},
        {"question": msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "good": msgs(("assistant", "d")),
         "bad": {"role": "assistant", "content": "e"}, "s1": 1, "s2": 0},
    ])
    rows, _ = load("generic", path, prompt="question", chosen="good", rejected="bad", system="sys",
                   score_chosen="s1", score_rejected="s2")
    assert rows[0] == {"index": 0, "prompt": msgs(("system", "Be kind."), ("user", "Why?")), "chosen": "Because.",
                       "rejected": "No.", "score_chosen": 2, "score_rejected": 1}
    assert rows[1]["prompt"] == msgs(("user", "a"), ("assistant", "b"), ("user", "c")) and rows[1]["rejected"] == "e"
    conv = write_jsonl(tmp_path / "c.jsonl", [{"chosen": msgs(("user", "q"), ("assistant", "a")),
                                               "rejected": msgs(("user", "q"), ("assistant", "b"))}])
    rows, _ = load("generic", conv, prompt=None)
    assert rows[0]["prompt"] == msgs(("user", "q")) and (rows[0]["chosen"], rows[0]["rejected"]) == ("a", "b")


def test_ultrachat_every_assistant_turn_or_the_last(tmp_path):
    conv = msgs(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"))
    path = write_jsonl(tmp_path / "uc.jsonl", [{"prompt": "u1", "prompt_id": "x", "messages": conv}])
    rows, _ = load("ultrachat_200k", path, "train_sft")
    assert [(r["prompt"], r["chosen"]) for r in rows] == [(conv[:1], "a1"), (conv[:3], "a2")]
    assert all(r["index"] == 0 for r in rows)
    last, _ = load("ultrachat_200k", path, "train_sft", turns="last")
    assert [(r["prompt"], r["chosen"]) for r in last] == [(conv[:3], "a2")]


def test_imdb_prefixes(tmp_path):
    path = write_jsonl(tmp_path / "imdb.jsonl", [
        {"text": "This film was<br /><br />a total delight from start to finish, truly.", "label": 1},
        {"text": "Dull and far too long; I left early.", "label": 0},
    ])
    rows, _ = load("imdb", path, min_words=3, max_words=3, template="{prefix}")
    assert [r["prefix"] for r in rows] == ["This film was", "Dull and far"]
    assert rows[0]["prompt"] == msgs(("user", "This film was"))
    positive, _ = load("imdb", path, label=1)
    assert len(positive) == 1 and positive[0]["prompt"][0]["content"].startswith("Continue this movie review: This")
    assert 2 <= len(positive[0]["prefix"].split()) <= 8


# --- bad rows ------------------------------------------------------------------------------------------

UF_OK = {"prompt": "q", "chosen": msgs(("user", "q"), ("assistant", "a")),
         "rejected": msgs(("user", "q"), ("assistant", "b"))}
BAD_ROWS = [
    ("ultrafeedback_binarized", {"prompt": "q", "chosen": UF_OK["chosen"]}, "row 1: missing field 'rejected'"),
    ("ultrafeedback_binarized", {**UF_OK, "chosen": msgs(("user", "q"), ("assistant", "a"), ("user", "more?"))},
     "row 1: chosen must end with an assistant message, ends with 'user'"),
    ("ultrafeedback_binarized", {**UF_OK, "rejected": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": 42}]},
     r"row 1: rejected\[1\].content must be a string, got int"),
    ("ultrafeedback_binarized", {**UF_OK, "chosen": "a plain string"},
     "row 1: field 'chosen' must be a non-empty list of messages, got str"),
    ("hh_rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: b"}, "row 1: missing field 'rejected'"),
    ("hh_rlhf", {"chosen": "Human: a Assistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
     "row 1: field 'chosen' must start with"),
    ("hh_rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": "\n\nHuman: a\n\nAssistant: b"},
     "row 1: chosen must end with an assistant turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "gpt", "value": 3},
                  "rejected": {"from": "gpt", "value": "b"}}, "row 1: chosen.value must be a string, got int"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
                  "chosen": {"from": "gpt", "value": "c"}, "rejected": {"from": "gpt", "value": "d"}},
     "row 1: conversations must end with a human turn"),
    ("generic", {"prompt": "q", "chosen": "a"}, r"row 1: missing field 'rejected' \(dataset.options.rejected\)"),
    ("generic", {"prompt": 5, "chosen": "a", "rejected": "b"}, "row 1: field 'prompt' must be a non-empty list"),
    ("ultrachat_200k", {"messages": msgs(("user", "a"), ("assistant", "b"), ("user", "c"))},
     "row 1: messages must end with an assistant message"),
    ("ultrachat_200k", {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]},
     r"row 1: messages\[0\].content must be a string, got NoneType"),
]
GOOD = {
    "ultrafeedback_binarized": UF_OK,
    "hh_rlhf": {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
    "sharegpt": {"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "gpt", "value": "b"},
                 "rejected": {"from": "gpt", "value": "c"}},
    "generic": {"prompt": "q", "chosen": "a", "rejected": "b"},
    "ultrachat_200k": {"messages": msgs(("user", "a"), ("assistant", "b"))},
}


@pytest.mark.parametrize(("name", "bad", "message"), BAD_ROWS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_ROWS)])
def test_bad_row_errors_name_row_and_field_or_are_counted(name, bad, message, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD[name], bad, GOOD[name]])
    with pytest.raises(DataError, match=message):
        load(name, path)
    rows, counts = load(name, path, bad_rows="skip")
    assert [r["index"] for r in rows] == [0, 2] and counts == {"skipped_bad_row": 1}


def test_unreadable_files_name_the_line(tmp_path):
    (tmp_path / "broken.jsonl").write_text(json.dumps(GOOD["generic"]) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load("generic", str(tmp_path / "broken.jsonl"))
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1 is a list, expected an object"):
        load("generic", str(tmp_path / "list.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        load("generic", str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="is a hub dataset: name its split"):
        load("generic", "someone/some-pairs", None)


def test_jsonl_lines_split_on_newline_only(tmp_path):
    """A JSON string may hold U+2028 unescaped; str.splitlines() would cut the line there."""
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps({**GOOD["generic"], "chosen": "one\u2028two"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    rows, _ = load("generic", str(path))
    assert rows[0]["chosen"] == "one\u2028two"


# --- filters -------------------------------------------------------------------------------------------


def test_filters_and_the_zephyr_beta_set():
    base = {"prompt": msgs(("user", "q")), "rejected": "meh"}
    rows = [
        {**base, "chosen": "Fine answer here.", "score_chosen": 5, "score_rejected": 5},       # ties
        {**base, "chosen": "meh"},                                                          # identical
        {**base, "chosen": " "},                                                            # empty
        {**base, "chosen": "the answer is that it depends on the weather."},                # wrong_case
        {**base, "chosen": "As an AI language model, I cannot taste food."},                # odd_preface
        {**base, "chosen": "I don\u2019t have personal opinions, but many people like it."},  # odd_preface
        {**base, "chosen": "no"},                                                           # kept: a label
        {**base, "chosen": "A good answer.", "rejected": "as an AI language model, no."},   # kept: rejected side
    ]
    counts = Counter()
    kept = apply_filters(rows, ["ties", "identical", "empty", "zephyr_beta"], counts)
    assert counts == {"filtered_ties": 1, "filtered_identical": 1, "filtered_empty": 1, "filtered_wrong_case": 1,
                      "filtered_odd_preface": 2}
    assert [r["chosen"] for r in kept] == ["no", "A good answer."]
    assert expand_filters(["empty", "zephyr_beta", "wrong_case"]) == ["empty", "wrong_case", "odd_preface"]
    assert "zephyr_beta" in filter_names()
    with pytest.raises(DataError, match="dataset.filters: unknown filter 'tie'"):
        apply_filters(rows, ["tie"], Counter())


# --- the real public rows ------------------------------------------------------------------------------


def test_real_ultrafeedback_sample(shared_data):
    uf = shared_data / "ultrafeedback"
    train, counts = load("ultrafeedback_binarized", str(uf / "uf_binarized_h4schema_train_1000.jsonl"), "train_prefs")
    test, _ = load("ultrafeedback_binarized", str(uf / "uf_binarized_h4schema_eval_200.jsonl"), "test_prefs")
    assert (len(train), len(test)) == (1000, 200) and not counts
    ties = Counter()
    apply_filters(train, ["ties"], ties)
    assert ties == {"filtered_ties": 111}  # the count the data README states
    apply_filters(test, ["ties"], ties)
    assert ties == {"filtered_ties": 136}
    assert all(r["prompt"][-1]["role"] == "user" for r in train)
    empties = Counter()
    apply_filters(train, ["empty"], empties)
    assert empties == {"filtered_empty": 2}  # two real answers are empty strings
    # The same file read as SFT conversations (its `messages` column is the chosen dialogue).
    sft, _ = load("ultrachat_200k", str(uf / "uf_binarized_h4schema_train_1000.jsonl"), "train_sft", turns="last")
    assert [r["chosen"] for r in sft] == [r["chosen"] for r in train]
    generic, _ = load("generic", str(uf / "uf_binarized_h4schema_eval_200.jsonl"))
    assert [(g["prompt"], g["chosen"]) for g in generic] == [(t["prompt"], t["chosen"]) for t in test]


def test_real_hh_rlhf(shared_data):
    rows, counts = load("hh_rlhf", str(shared_data / "hh_rlhf" / "harmless-base-test.jsonl.gz"), "test")
    assert len(rows) + counts["skipped_prompt_mismatch"] == 2312 and counts == {"skipped_prompt_mismatch": 5}
    assert all(r["prompt"][0]["role"] == "user" and r["prompt"][-1]["role"] == "user" for r in rows)
    assert sum(len(r["prompt"]) > 1 for r in rows) > 1000  # most are multi-turn
    empties = Counter()
    apply_filters(rows, ["empty"], empties)
    assert empties["filtered_empty"] >= 1  # a few transcripts end on an empty answer
    # Every turn marker is consumed (a few answers do begin with a bare "Human:", as written in the data).
    assert not any("\n\nHuman:" in r[k] or "\n\nAssistant:" in r[k] for r in rows for k in ("chosen", "rejected"))


def test_real_llamafactory_demo(shared_data):
    rows, _ = load("sharegpt", str(shared_data / "llamafactory_demo" / "dpo_en_demo.json"))
    assert len(rows) == 300
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert sum(r["prompt"][0]["role"] == "system" for r in rows) == 80
    assert sum(sum(m["role"] == "user" for m in r["prompt"]) > 1 for r in rows) > 100  # multi-turn


def test_real_imdb(shared_data):
    rows, _ = load("imdb", str(shared_data / "imdb" / "aclImdb_test_subset_5000.jsonl"), "test", label=0)
    assert len(rows) == 2500 and all(r["label"] == 0 for r in rows)
    assert all(2 <= len(r["prefix"].split()) <= 8 and "<br" not in r["prefix"] for r in rows)
