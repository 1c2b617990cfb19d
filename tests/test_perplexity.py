"""perplexity(): exact against a brute-force computation, windowing, the organism's manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mechclaims.errors import MechclaimsError
from mechclaims.loading import load_model
from mechclaims.organism import organism_dir
from mechclaims.perplexity import PerplexityError, load_text, perplexity, window_bounds

ORG = organism_dir("gpt2")


@pytest.fixture(scope="module")
def org32():
    return load_model("organism:gpt2-base", memo=False)


@pytest.fixture(scope="module")
def org64():
    return load_model("organism:gpt2-base", dtype="float64", memo=False)


def _heldout_docs() -> list[str]:
    return (ORG / "heldout.txt").read_text(encoding="utf-8").splitlines()


def brute_force(model, text: str, window: int) -> tuple[float, int]:
    """Independent reference: per window, plain cross_entropy on the HF module's logits."""
    tok = model.tokenizer
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    total, n = 0.0, 0
    for start in range(0, len(ids), window):
        w = torch.tensor(ids[start:start + window])
        if len(w) < 2:
            continue
        logits = model.hf_model(w[None]).logits[0]
        total += float(torch.nn.functional.cross_entropy(logits[:-1].double(), w[1:], reduction="sum"))
        n += len(w) - 1
    return total / n, n


@pytest.mark.parametrize("window,batch_size", [(None, 8), (50, 3)])
def test_equals_brute_force_float64(org64, window, batch_size):
    text = "\n".join(_heldout_docs()[:12])
    got = perplexity(org64, text, window=window, batch_size=batch_size)
    want_nll, want_n = brute_force(org64, text, window or 128)
    assert got["n_tokens"] == want_n
    assert got["window"] == (window or 128)  # min(n_ctx=128, 1024)
    assert got["bos"] is True
    assert abs(got["nll"] - want_nll) <= 1e-9 * abs(want_nll)
    assert abs(got["ppl"] - math.exp(want_nll)) <= 1e-9 * math.exp(want_nll)
    assert got["ppl"] == pytest.approx(math.exp(got["nll"]), rel=1e-15)


def test_equals_brute_force_on_a_gated_architecture(llama_pair):
    m = load_model(str(llama_pair[0]), dtype="float64", memo=False)
    text = "the cat sat on the mat near the door. " * 12
    got = perplexity(m, text, window=40, batch_size=2)
    bos = bool(m.bridge.cfg.default_prepend_bos)
    tok = m.tokenizer
    ids = ([tok.bos_token_id] if bos else []) + tok(text, add_special_tokens=False)["input_ids"]
    total, n = 0.0, 0
    for s in range(0, len(ids), 40):
        w = torch.tensor(ids[s:s + 40])
        if len(w) >= 2:
            lg = m.hf_model(w[None]).logits[0]
            total += float(torch.nn.functional.cross_entropy(lg[:-1], w[1:], reduction="sum"))
            n += len(w) - 1
    assert got["n_tokens"] == n and got["n_ids"] == len(ids)
    assert got["nll"] == pytest.approx(total / n, rel=1e-9)


def test_windows_are_non_overlapping_and_count_predicted_tokens(org32):
    text = "\n".join(_heldout_docs()[:8])
    res = perplexity(org32, text, window=37)
    b = res["window_bounds"]
    assert res["n_windows"] == len(b) > 3
    assert b[0][0] == 0
    for (s0, e0), (s1, _e1) in zip(b, b[1:]):
        assert e0 == s1  # contiguous, no overlap
        assert e0 - s0 == 37
    assert 2 <= b[-1][1] - b[-1][0] <= 37
    assert res["n_tokens"] == sum(e - s - 1 for s, e in b)
    assert res["n_ids"] - b[-1][1] in (0, 1)  # only a 1-token tail (nothing to predict) is dropped


def test_window_bounds_edge_cases():
    assert window_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert window_bounds(9, 4) == [(0, 4), (4, 8)]  # the trailing single token predicts nothing
    assert window_bounds(3, 128) == [(0, 3)]
    assert window_bounds(1, 128) == []


def test_text_shorter_than_a_window(org32):
    res = perplexity(org32, "Leo went to the school.")
    assert res["n_windows"] == 1
    assert res["n_tokens"] == res["n_ids"] - 1
    assert res["window_bounds"] == [(0, res["n_ids"])]
    assert math.isfinite(res["ppl"]) and res["ppl"] > 1.0


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_empty_text_is_a_clear_error(org32, text):
    with pytest.raises(PerplexityError, match="empty") as e:
        perplexity(org32, text)
    assert isinstance(e.value, MechclaimsError)


def test_bad_window_is_a_clear_error(org32):
    with pytest.raises(PerplexityError, match=r"window must be an integer in \[2, 128\]"):
        perplexity(org32, "hello there", window=1)
    with pytest.raises(PerplexityError, match="model context"):
        perplexity(org32, "hello there", window=4096)


def test_hooks_change_the_result_and_are_removed(org32):
    text = "\n".join(_heldout_docs()[:3])
    plain = perplexity(org32, text)
    block = f"transformer.h.{org32.n_layers - 1}.mlp"
    hooked = perplexity(org32, text, hooks=[(block, lambda mod, args, out: out * 0.0)])
    assert hooked["ppl"] != pytest.approx(plain["ppl"], rel=1e-3)
    assert perplexity(org32, text)["nll"] == plain["nll"]  # hooks gone afterwards


def test_organism_base_matches_manifest(org32):
    """The organism builder measures perplexity with this very function, on heldout.txt as one
    stream (the behavioural claims' default text): the manifest's figure is reproduced."""
    manifest = json.loads((ORG / "manifest.json").read_text())
    got = perplexity(org32, ORG / "heldout.txt")
    assert got["ppl"] == pytest.approx(manifest["acceptance"]["ppl_base"], rel=1e-6)
    assert "perplexity" in manifest["evaluation"]["perplexity"]


def test_load_text_file_and_path_input(org32, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Ruth went to the beach.\nVera packed the chair.\n", encoding="utf-8")
    assert load_text(f) == f.read_text(encoding="utf-8")
    assert load_text(str(f)) == f.read_text(encoding="utf-8")
    assert perplexity(org32, Path(f))["nll"] == perplexity(org32, f.read_text(encoding="utf-8"))["nll"]


def test_load_text_errors(tmp_path):
    with pytest.raises(PerplexityError, match="directory"):
        load_text(tmp_path)
    with pytest.raises(PerplexityError, match="neither an existing file"):
        load_text(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(PerplexityError, match="not valid UTF-8"):
        load_text(bad)


def test_load_text_dataset_not_cached_is_a_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(PerplexityError) as e:
        load_text("mechclaims-no-such-dataset:some-config:test")
    msg = str(e.value)
    assert "mechclaims-no-such-dataset" in msg and "local cache" in msg and "never downloads" in msg


def test_load_text_dataset_spec_joins_the_text_column_offline(monkeypatch):
    """The spec is parsed into load_dataset(name, config, split=...), called with the offline
    flags on (restored afterwards), and the text column is joined with two newlines as in the
    paper's code. (No WikiText here: load_dataset is replaced by a local Dataset.)"""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    calls = []
    before = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)

    def fake(name, config, split):
        calls.append((name, config, split, datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        return datasets.Dataset.from_dict({"text": [" = Title = \n", "", " A line .\n"], "n": [1, 2, 3]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_text("wikitext:wikitext-2-raw-v1:test") == " = Title = \n\n\n\n\n A line .\n"
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test", True, True)]
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before
    load_text("some-dataset:validation")
    assert calls[-1][:3] == ("some-dataset", None, "validation")
