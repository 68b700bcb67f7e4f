"""Golden tests of the chat tokenization conventions (prefopt/data/tokenize.py).

Two templates: SmolLM2's ChatML (``<|im_start|>role\\n...<|im_end|>\\n``, end-of-turn = eos = ``<|im_end|>``,
no BOS added by the tokenizer) and Zephyr's (``<|user|>\\n...</s>\\n``) on a tokenizer that adds a BOS
``<s>`` by default, as Mistral's does. The Zephyr tokenizer is built offline from SmolLM2's by adding
``<s>``/``</s>`` as special tokens and switching ``add_bos_token`` on. Each test names the bug class it
guards against: double BOS/EOS, template tags leaking into a completion, masks off by one, prompts
truncated to nothing.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from prefopt.data.collate import collate
from prefopt.data.tokenize import EncodeSettings, TokenizeStats, encode_rows
from prefopt.models import ZEPHYR_CHAT_TEMPLATE, load_tokenizer

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
WIDE = EncodeSettings(max_length=4096, max_prompt_length=2048)


@pytest.fixture(scope="module")
def chatml():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def zephyr():
    tok = load_tokenizer("tiny")
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tok.add_bos_token = True
    tok.chat_template = ZEPHYR_CHAT_TEMPLATE
    assert tok("x").input_ids[0] == tok.bos_token_id  # really a BOS-adding tokenizer
    return tok


def pair(prompt, chosen="Hello there", rejected="Go away", index=0):
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"index": index, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def decoded(tok, row):
    return {k: tok.decode(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}


def test_chatml_single_turn_golden(chatml):
    (row,) = encode_rows([pair("Hi")], chatml, WIDE, "paired")
    assert decoded(chatml, row) == {
        "prompt_ids": SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "chosen_ids": "Hello there<|im_end|>",
        "rejected_ids": "Go away<|im_end|>",
    }
    # Golden ids: "Hello" 19556, " there" 665, <|im_end|> 2; the prompt opens with <|im_start|> (1).
    assert row["chosen_ids"] == [19556, 665, 2]
    assert row["rejected_ids"] == [6044, 2025, 2]
    assert row["prompt_ids"][:3] == [1, 9690, 198] and row["prompt_ids"][-3:] == [520, 9531, 198]
    assert len(row["prompt_ids"]) == 31


def test_chatml_one_end_of_turn_no_trailing_newline_no_tag_leak(chatml):
    (row,) = encode_rows([pair("Hi", chosen="Line one.\n\nLine two.")], chatml, WIDE, "paired")
    eot = chatml.convert_tokens_to_ids("<|im_end|>")
    for key in ("chosen_ids", "rejected_ids"):
        assert row[key].count(eot) == 1 and row[key][-1] == eot  # exactly one, and nothing trained after it
        text = chatml.decode(row[key])
        assert "<|im_start|>" not in text and "assistant" not in text
    assert chatml.decode(row["chosen_ids"]) == "Line one.\n\nLine two.<|im_end|>"


def test_chatml_multi_turn_prompt_kept_whole(chatml):
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    (row,) = encode_rows([pair(prompt, chosen="Red.", rejected="No.")], chatml, WIDE, "paired")
    assert decoded(chatml, row) == {
        "prompt_ids": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
                      "<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n"
                      "<|im_start|>assistant\n",
        "chosen_ids": "Red.<|im_end|>",
        "rejected_ids": "No.<|im_end|>",
    }


def test_exact_completion_mask(chatml):
    rows = encode_rows([pair("Hi"), pair("A longer question here", chosen="Yes", rejected="No, never", index=1)],
                       chatml, WIDE, "paired")
    batch = collate(rows, chatml.pad_token_id, "paired")
    n = len(rows)
    for i, row in enumerate(rows):
        for side, key in ((0, "chosen_ids"), (n, "rejected_ids")):
            p, c = len(row["prompt_ids"]), len(row[key])
            mask = batch["completion_mask"][side + i].tolist()
            assert mask == [False] * p + [True] * c + [False] * (len(mask) - p - c)
            assert batch["input_ids"][side + i, :p + c].tolist() == row["prompt_ids"] + row[key]
            assert batch["attention_mask"][side + i].tolist() == [1] * (p + c) + [0] * (len(mask) - p - c)


def test_zephyr_template_golden_single_bos(zephyr):
    (row,) = encode_rows([pair("Hi")], zephyr, WIDE, "paired")
    assert decoded(zephyr, row) == {
        "prompt_ids": "<s><|user|>\nHi</s>\n<|assistant|>\n",
        "chosen_ids": "Hello there</s>",
        "rejected_ids": "Go away</s>",
    }
    bos, eos = zephyr.bos_token_id, zephyr.eos_token_id
    for key in ("chosen_ids", "rejected_ids"):
        full = row["prompt_ids"] + row[key]
        assert full.count(bos) == 1 and full[0] == bos  # the BOS once, in front, never before the completion
        assert row[key].count(eos) == 1 and row[key][-1] == eos
        assert "<|assistant|>" not in zephyr.decode(row[key])


def test_zephyr_multi_turn_with_system(zephyr):
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    (row,) = encode_rows([pair(prompt, chosen="Red.", rejected="No.")], zephyr, WIDE, "paired")
    assert decoded(zephyr, row)["prompt_ids"] == (
        "<s><|system|>\nBe brief.</s>\n<|user|>\nName a colour.</s>\n<|assistant|>\nBlue.</s>\n"
        "<|user|>\nAnother?</s>\n<|assistant|>\n"
    )
    assert decoded(zephyr, row)["chosen_ids"] == "Red.</s>"


def test_tokenizer_without_a_template_gets_zephyrs(chatml, tmp_path):
    chatml.save_pretrained(tmp_path / "tok")
    config = tmp_path / "tok" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    for extra in tmp_path.glob("tok/chat_template.*"):
        extra.unlink()
    bare = load_tokenizer(str(tmp_path / "tok"))
    assert bare.chat_template == ZEPHYR_CHAT_TEMPLATE
    (row,) = encode_rows([pair("Hi")], bare, WIDE, "paired")
    assert bare.decode(row["prompt_ids"]) == "<|user|>\nHi<|im_end|>\n<|assistant|>\n"
    assert bare.decode(row["chosen_ids"]) == "Hello there<|im_end|>"


def test_template_that_writes_bos_gets_no_second_one(zephyr):
    tok = zephyr
    original = tok.chat_template
    tok.chat_template = "{{ bos_token }}" + ZEPHYR_CHAT_TEMPLATE
    try:
        (row,) = encode_rows([pair("Hi")], tok, WIDE, "paired")
    finally:
        tok.chat_template = original
    assert (row["prompt_ids"] + row["chosen_ids"]).count(tok.bos_token_id) == 1
    assert tok.decode(row["prompt_ids"]) == "<s><|user|>\nHi</s>\n<|assistant|>\n"


def test_prompt_truncated_from_the_left_keeps_bos_then_completion_from_the_right(zephyr):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    stats = TokenizeStats()
    (row,) = encode_rows([pair(long_prompt, chosen="one two three four five six seven eight nine ten")],
                         zephyr, EncodeSettings(max_length=40, max_prompt_length=32), "paired", stats)
    assert len(row["prompt_ids"]) == 32
    assert row["prompt_ids"][0] == zephyr.bos_token_id
    # The end of the prompt, nearest the answer, survives; the start of the question goes.
    assert zephyr.decode(row["prompt_ids"]).endswith("word199</s>\n<|assistant|>\n")
    assert "word0 " not in zephyr.decode(row["prompt_ids"])
    assert len(row["chosen_ids"]) == 8 and len(row["prompt_ids"] + row["chosen_ids"]) == 40
    assert zephyr.decode(row["chosen_ids"]).startswith("one two")
    assert row["rejected_ids"] == zephyr("Go away</s>", add_special_tokens=False).input_ids  # fits: untouched
    assert stats.as_dict() == {"rows_in": 1, "rows_kept": 1, "truncated_chosen": 1, "truncated_prompt": 1}


def test_chatml_truncation_counts_every_cut(chatml):
    rows = [pair("Hi"), pair("x " * 300, index=1), pair("Hi", chosen="y " * 300, index=2)]
    stats = TokenizeStats()
    out = encode_rows(rows, chatml, EncodeSettings(max_length=64, max_prompt_length=48), "paired", stats)
    assert [len(r["prompt_ids"]) for r in out] == [31, 48, 31]
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 64 for r in out)
    assert stats.as_dict() == {"rows_in": 3, "rows_kept": 3, "truncated_chosen": 1, "truncated_prompt": 1}


def test_prompt_length_must_leave_room(chatml):
    from prefopt.data import DataError

    with pytest.raises(DataError, match="max_prompt_length=64 must be smaller than dataset.max_length=64"):
        encode_rows([pair("Hi")], chatml, EncodeSettings(64, 64), "paired")


def test_sft_and_unpaired_rows(chatml):
    (sft,) = encode_rows([{"index": 3, "prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hey"}],
                         chatml, WIDE, "sft")
    assert set(sft) == {"index", "prompt_ids", "chosen_ids"} and chatml.decode(sft["chosen_ids"]) == "Hey<|im_end|>"
    (unp,) = encode_rows([{"index": 4, "prompt": [{"role": "user", "content": "Hi"}], "completion": "Hey",
                           "desirable": False}], chatml, WIDE, "unpaired")
    assert unp["desirable"] is False and chatml.decode(unp["completion_ids"]) == "Hey<|im_end|>"


@pytest.mark.parametrize("template", ["chatml", "zephyr"])
def test_parity_with_trl_on_real_rows(template, request, shared_data):
    """TRL 1.16 tokenizes prompt and prompt+completion through the chat template in one go and splits at
    their common prefix. Ours must give the same prompt ids (plus the tokenizer's BOS, which TRL's
    apply_chat_template path leaves out for a template that does not write it) and the same completion
    ids up to and including the first end-of-turn token; TRL also keeps the template's trailing newline
    after it, which we never train on."""
    from trl.data_utils import _tokenize, common_prefix_length

    from prefopt.data import get_dataset
    from prefopt.data.registry import loading

    tok = request.getfixturevalue(template)
    with loading(Counter()):
        rows = get_dataset("ultrafeedback_binarized").fn(
            str(shared_data / "ultrafeedback" / "uf_binarized_h4schema_eval_200.jsonl"), "test_prefs")[:25]
    ours = encode_rows(rows, tok, EncodeSettings(100_000, 50_000), "paired")
    bos = [tok.bos_token_id] if template == "zephyr" else []
    for row, mine in zip(rows, ours, strict=True):
        prompt_ids = _tokenize(tok, row["prompt"], add_generation_prompt=True)["input_ids"]
        for key in ("chosen", "rejected"):
            full = _tokenize(tok, row["prompt"] + [{"role": "assistant", "content": row[key]}])["input_ids"]
            cut = common_prefix_length(prompt_ids, full)
            assert mine["prompt_ids"] == bos + prompt_ids[:cut], json.dumps(row)[:200]
            theirs = full[cut:]
            n = len(mine[f"{key}_ids"])
            assert theirs[:n] == mine[f"{key}_ids"]
            assert tok.decode(theirs[n:]) in ("", "\n")


def test_parity_with_trl_multi_turn_hh(chatml, shared_data):
    from trl.data_utils import _tokenize, common_prefix_length

    from prefopt.data import get_dataset
    from prefopt.data.registry import loading

    with loading(Counter()):
        rows = get_dataset("hh_rlhf").fn(str(shared_data / "hh_rlhf" / "harmless-base-test.jsonl.gz"), "test")
    rows = [r for r in rows if len(r["prompt"]) >= 3 and r["chosen"].strip()][:15]
    assert len(rows) == 15
    ours = encode_rows(rows, chatml, EncodeSettings(100_000, 50_000), "paired")
    for row, mine in zip(rows, ours, strict=True):
        prompt_ids = _tokenize(chatml, row["prompt"], add_generation_prompt=True)["input_ids"]
        full = _tokenize(chatml, row["prompt"] + [{"role": "assistant", "content": row["chosen"]}])["input_ids"]
        cut = common_prefix_length(prompt_ids, full)
        assert cut == len(prompt_ids) and mine["prompt_ids"] == prompt_ids
        assert full[cut:cut + len(mine["chosen_ids"])] == mine["chosen_ids"]
