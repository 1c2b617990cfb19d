"""`mechclaims probe train` and claim C24 (issue #10 §8): reading labelled data (Jigsaw's
train.csv as is), training and saving a probe from the command line, and C24 failing, passing
or skipping on the probe's recorded held-out accuracy."""

import csv
import json
from pathlib import Path

import pytest
import torch

from mechclaims.cli import main
from mechclaims.errors import ProbeError
from mechclaims.probe import Probe, load_probe, read_labelled

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
pytest_plugins = ["pytester"]

TOXIC = ["shut up you stupid idiot", "you are an idiot", "go away you stupid fool", "what a stupid idiot",
         "nobody likes you, idiot"]
CLEAN = ["the weather is nice today", "hello my friend how are you", "the cat sat on the mat",
         "please pass the salt", "what a lovely day in the park"]


def _rows(n_each=4):
    """(text, label) pairs: toxic ones say idiot/stupid, clean ones do not; 2 * 5 * n_each rows."""
    rows = []
    for i in range(n_each):
        rows += [(f"{t} {'!' * i}".strip(), 1) for t in TOXIC]
        rows += [(f"{c} {'.' * i}".strip(), 0) for c in CLEAN]
    return rows


def _jigsaw(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", "toxic", "severe_toxic"])
        for i, (text, label) in enumerate(rows):
            w.writerow([f"{i:016x}", text, label, 0])
    return path


def _jsonl(path, rows, text="text", label="label"):
    path.write_text("".join(json.dumps({text: t, label: y}) + "\n" for t, y in rows))
    return path


# --- read_labelled -----------------------------------------------------------------------------


def test_reads_jigsaw_train_csv_as_is(tmp_path):
    rows = _rows(2) + [('a comment\nover two lines, with "quotes"', 0)]
    texts, labels = read_labelled(_jigsaw(tmp_path / "train.csv", rows))
    assert texts == [t for t, _ in rows] and labels == [y for _, y in rows]


def test_reads_jsonl_and_label_spellings(tmp_path):
    p = tmp_path / "d.jsonl"
    spellings = [1, 0, "1", "0", True, False, 1.0, 0.0, " true ", "FALSE", "1.0", "0"]
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": v, "extra": 3}) + "\n"
                         for i, v in enumerate(spellings)) + "\n")
    texts, labels = read_labelled(p)
    assert texts == [f"t{i}" for i in range(12)] and labels == [1, 0] * 6


def test_explicit_columns(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", _rows(1), text="sentence", label="y")
    assert len(read_labelled(p, text_column="sentence", label_column="y")[0]) == 10


def test_a_missing_column_lists_the_columns_found(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", _rows(1), text="sentence", label="y")
    with pytest.raises(ProbeError, match=r"no text column.*'sentence', 'y'.*--text-column"):
        read_labelled(p)
    with pytest.raises(ProbeError, match=r"--label-column 'toxic'.*not a column.*\['sentence', 'y'\]"):
        read_labelled(p, text_column="sentence", label_column="toxic")


def test_one_class_only_is_refused(tmp_path):
    p = _jigsaw(tmp_path / "train.csv", [(t, 1) for t, _ in _rows(2)])
    with pytest.raises(ProbeError, match=r"0 clean \(0\) and 20 toxic.*'toxic'.*at least 2 of each class"):
        read_labelled(p)


def test_a_bad_label_names_file_and_line(tmp_path):
    rows = _rows(1)
    p = _jigsaw(tmp_path / "train.csv", rows[:3] + [("hmm", "maybe")] + rows[3:])
    with pytest.raises(ProbeError, match=r"train\.csv:5: got label 'maybe' in column 'toxic'; expected 0"):
        read_labelled(p)
    q = _jsonl(tmp_path / "d.jsonl", rows[:6] + [("x", 0.5)])
    with pytest.raises(ProbeError, match=r"d\.jsonl:7: got label 0\.5"):
        read_labelled(q)


def test_too_few_rows_and_missing_file(tmp_path):
    with pytest.raises(ProbeError, match=r"got 4 labelled row\(s\); expected at least 10"):
        read_labelled(_jsonl(tmp_path / "d.jsonl", _rows(1)[3:7]))
    with pytest.raises(ProbeError, match=r"'nope\.csv', which does not exist"):
        read_labelled("nope.csv")
    with pytest.raises(ProbeError, match=r"expected \.jsonl .* or \.csv"):
        read_labelled(_jsonl(tmp_path / "d.txt", _rows(1)))


# --- mechclaims probe train --------------------------------------------------------------------


def test_probe_train_end_to_end(gpt2_pair, tmp_path, capsys):
    from transformers import AutoConfig

    base, _ = gpt2_pair
    data = _jigsaw(tmp_path / "train.csv", _rows(4))
    out = tmp_path / "probes" / "probe.safetensors"
    assert main(["probe", "train", "--model", str(base), "--data", str(data), "--out", str(out)]) == 0
    probe = load_probe(out, d_model=AutoConfig.from_pretrained(base).n_embd)
    m = probe.metadata
    assert 0.0 <= m["heldout_accuracy"] <= 1.0 and isinstance(m["intercept"], float)
    assert (m["n_train"], m["n_test"]) == (32, 8)
    from mechclaims.cache import sha256_file

    assert m["data_sha256"] == sha256_file(data) and m["data_path"] == str(data)
    printed = capsys.readouterr().out
    assert f"held-out accuracy {m['heldout_accuracy']:.4f}" in printed and "n_train 32, n_test 8" in printed


@pytest.mark.parametrize("case", ["same", "suffix"])
def test_probe_train_refuses_bad_out(tmp_path, capsys, case):
    data = _jsonl(tmp_path / "d.jsonl", _rows(2))
    out = data if case == "same" else tmp_path / "probe.pt"
    rc = main(["probe", "train", "--model", "./not-loaded", "--data", str(data), "--out", str(out)])
    assert rc == 4  # a setup error: an output onto an input, or a probe path of the wrong kind
    err = capsys.readouterr().err
    assert err.startswith("mechclaims: error: ")
    assert ("would overwrite --data" if case == "same" else "expected a path ending in .safetensors") in err
    assert data.read_text().count("\n") == 20  # the data is untouched


# --- C24 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, gpt2_pair):
    from transformers import AutoConfig

    from tests import tiny

    d = tmp_path_factory.mktemp("c24")
    base, cand = gpt2_pair
    d_model = AutoConfig.from_pretrained(base).n_embd
    direction = torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    probes = {}
    for name, meta in {"low": {"heldout_accuracy": 0.6}, "high": {"heldout_accuracy": 0.95}, "none": {}}.items():
        probes[name] = str(d / f"{name}.safetensors")
        Probe(direction, meta).save(probes[name])
    (d / "prompts.txt").write_text("\n".join(tiny.PROMPTS) + "\n")
    # One cache for the three runs: the analysis is keyed on the direction, which they share.
    return {"base": str(base), "model": str(cand), "probes": probes, "prompts": str(d / "prompts.txt"),
            "cache": str(d / "cache")}


# C24 is a gate claim: without a recorded accuracy it is "not checked", and fails (never green unchecked).
@pytest.mark.parametrize("probe, status", [("low", "fail"), ("high", "pass"), ("none", "not_checked")])
def test_c24_fails_passes_or_skips_on_the_recorded_accuracy(pytester, pair_files, probe, status):
    report = pytester.path / "out" / "claims.html"
    res = pytester.runpytest_inprocess(
        CLAIMS, "--base", pair_files["base"], "--model", pair_files["model"], "--probe",
        pair_files["probes"][probe], "--prompts", pair_files["prompts"], "--max-new-tokens", "4",
        "--bootstrap", "20", "-p", "no:randomly", "--cache-dir", pair_files["cache"],
        "--report", str(report), "-k", "C24")
    assert res.ret == (0 if status == "pass" else 1)
    (c24,) = json.loads(report.with_suffix(".json").read_text())["claims"]
    assert c24["id"] == "C24" and c24["status"] == status
    if status == "not_checked":
        assert "carries no held-out accuracy" in c24["reason"] and "mechclaims probe train" in c24["reason"]
