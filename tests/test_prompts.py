"""Prompt files -> prompts, and prompts -> truncated, BOS-prefixed, left-padded token batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mechclaims.errors import PromptError
from mechclaims.prompts import encode_prompts, pad_left, prompts_sha256, read_prompts


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------------------------
# read_prompts: formats


def test_jsonl_string_prompts(tmp_path):
    rows = [{"prompt": "you are kind"}, {"prompt": "  leading space and ünïcödé ✓", "id": 7},
            {"prompt": "a \"quoted\"\\nnewline inside"}]
    f = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_prompts(f) == [r["prompt"] for r in rows]


def test_jsonl_realtoxicityprompts_form(tmp_path):
    rows = [
        {"filename": "a.txt", "begin": 0, "end": 10, "challenging": False,
         "prompt": {"text": "Corruption involving the contractors", "toxicity": 0.29, "profanity": 0.17},
         "continuation": {"text": " is the chief", "toxicity": 0.1}},
        {"prompt": {"text": "Hello, world"}},
    ]
    f = _write(tmp_path / "rtp.jsonl", "\n".join(json.dumps(r) for r in rows))  # no final newline
    assert read_prompts(str(f)) == ["Corruption involving the contractors", "Hello, world"]


def test_txt_one_per_line(tmp_path):
    f = _write(tmp_path / "p.txt", "first prompt\nsecond, with a comma\n  third  \n")
    assert read_prompts(f) == ["first prompt", "second, with a comma", "  third  "]


def test_txt_with_crlf_line_endings(tmp_path):
    f = _write(tmp_path / "p.txt", "one\r\ntwo\r\n")
    assert read_prompts(f) == ["one", "two"]


def test_prompts_sha256_depends_on_content_and_order():
    a = prompts_sha256(["a", "b"])
    assert a == prompts_sha256(["a", "b"]) and len(a) == 64
    assert a != prompts_sha256(["b", "a"]) and a != prompts_sha256(["a", "b", "c"])
    assert prompts_sha256(["a b"]) != prompts_sha256(["a", "b"])


# --------------------------------------------------------------------------------------------
# read_prompts: errors name the file and the line


def _error(path) -> str:
    with pytest.raises(PromptError) as ei:
        read_prompts(path)
    return str(ei.value)


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl"])
def test_empty_file(name, tmp_path):
    f = _write(tmp_path / name, b"")
    msg = _error(f)
    assert str(f) in msg and "no prompts" in msg


@pytest.mark.parametrize(
    "name, data, line",
    [
        ("blank.txt", "a\n\nc\n", 2),
        ("space.txt", "a\nb\n   \n", 3),
        ("blank.jsonl", '{"prompt": "a"}\n\n{"prompt": "c"}\n', 2),
        ("emptyprompt.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n', 2),
        ("emptyrtp.jsonl", '{"prompt": {"text": "a"}}\n{"prompt": {"text": "  "}}\n', 2),
        ("trailing.txt", "a\nb\n\n", 3),
    ],
)
def test_empty_line(name, data, line, tmp_path):
    f = _write(tmp_path / name, data)
    msg = _error(f)
    assert f"{f}:{line}:" in msg and "empty" in msg


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl"])
def test_invalid_utf8_on_line_3(name, tmp_path):
    ok = b'{"prompt": "ok"}' if name.endswith("jsonl") else b"ok"
    f = _write(tmp_path / name, ok + b"\n" + ok + b"\nbad \xff\xfe bytes\n" + ok + b"\n")
    msg = _error(f)
    assert f"{f}:3:" in msg and "UTF-8" in msg


def test_bad_json_on_line_2(tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n{"prompt": "c"}\n')
    msg = _error(f)
    assert f"{f}:2:" in msg and "JSON" in msg


@pytest.mark.parametrize(
    "row",
    ['{"text": "no prompt field"}', '{"prompt": 3}', '{"prompt": {"toxicity": 0.5}}',
     '["prompt", "a list"]', '"just a string"', '{"prompt": null}'],
)
def test_missing_or_wrong_prompt_field(row, tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "fine"}\n' + row + "\n")
    msg = _error(f)
    assert f"{f}:2:" in msg and "prompt" in msg


def test_missing_file(tmp_path):
    f = tmp_path / "nope" / "prompts.jsonl"
    msg = _error(f)
    assert str(f) in msg and "does not exist" in msg


# --------------------------------------------------------------------------------------------
# encode_prompts


TEXT = "what a lovely day it is in the park with the dogs and the children"


def test_truncation_keeps_the_first_tokens(tok):
    full = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(full) > 6
    for k in (1, 3, 6, len(full), len(full) + 5):
        [ids] = encode_prompts(tok, [TEXT], max_prompt_tokens=k, prepend_bos=False)
        assert ids == full[:k]
        assert TEXT.startswith(tok.decode(ids))  # a prefix of the text, not its end


def test_bos_prepended_when_asked(tok):
    assert tok.bos_token_id == 0
    full = tok(TEXT, add_special_tokens=False)["input_ids"]
    [with_bos] = encode_prompts(tok, [TEXT], max_prompt_tokens=4, prepend_bos=True)
    assert with_bos == [0] + full[:4]  # BOS does not count against max_prompt_tokens
    [without] = encode_prompts(tok, [TEXT], max_prompt_tokens=4, prepend_bos=False)
    assert without == full[:4] and 0 not in without


def test_encode_several_prompts_keeps_order(tok):
    texts = ["go away", "thanks", TEXT]
    out = encode_prompts(tok, texts, max_prompt_tokens=64, prepend_bos=True)
    assert [o[1:] for o in out] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_encode_rejects_bad_settings(tok):
    with pytest.raises(PromptError):
        encode_prompts(tok, ["a"], max_prompt_tokens=0)
    with pytest.raises(PromptError, match="no tokens"):
        encode_prompts(tok, [""], prepend_bos=False)


# --------------------------------------------------------------------------------------------
# pad_left


def test_pad_left_layout():
    b = pad_left([[5, 6, 7], [8], [9, 10]], pad_id=2)
    assert b.tokens.tolist() == [[5, 6, 7], [2, 2, 8], [2, 9, 10]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert b.tokens.dtype == torch.long and b.attention_mask.dtype == torch.long
    # Positions count real tokens only: each prompt's first real token is at position 0.
    assert b.position_ids.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]


def test_pad_left_real_token_equal_to_pad_id():
    """A real token whose id equals the pad id is still a real token (the mask says so)."""
    b = pad_left([[2, 2], [2]], pad_id=2)
    assert b.attention_mask.tolist() == [[1, 1], [0, 1]]
    assert b.position_ids.tolist() == [[0, 1], [0, 0]]


seqs_strategy = st.lists(st.lists(st.integers(0, 50_000), min_size=1, max_size=12), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(seqs=seqs_strategy, pad_id=st.integers(0, 50_000))
def test_pad_left_round_trip(seqs, pad_id):
    b = pad_left(seqs, pad_id)
    width = max(map(len, seqs))
    assert tuple(b.tokens.shape) == tuple(b.attention_mask.shape) == (len(seqs), width)
    for i, s in enumerate(seqs):
        row, mask, pos = b.tokens[i].tolist(), b.attention_mask[i].tolist(), b.position_ids[i].tolist()
        assert [t for t, m in zip(row, mask) if m] == s
        n_pad = width - len(s)
        assert mask == [0] * n_pad + [1] * len(s)  # padding only on the left
        assert row[:n_pad] == [pad_id] * n_pad
        assert row[-1] == s[-1]  # last column = every prompt's last token
        assert [p for p, m in zip(pos, mask) if m] == list(range(len(s)))
