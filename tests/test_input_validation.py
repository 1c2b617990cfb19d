"""Inputs that used to be accepted with a silent wrong number, or ended in a raw traceback
(issue 18): each is now a setup error that names the input, what was expected and what to do.

Library functions are called directly (fast); a few cases run pytest on ``claims/`` end to end
and check exit status 4 with nothing computed (the ``--cache-dir`` holds no result).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from mechclaims.errors import ConfigError, MechclaimsError, PromptError, ScorerError
from mechclaims.organism import layout
from mechclaims.schema import CLAIMS_SCHEMA

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
ORG = layout("gpt2")
pytest_plugins = ["pytester"]

# A claims.json as a run writes it, trimmed to what a baseline reads: three claims of an organism
# run (C3 failed), values and intervals as the report writes them.
GOOD = {
    "schema": CLAIMS_SCHEMA,
    "created": "2026-12-01T10:12:51+00:00",
    "provenance": {
        "base": {"source": "organism:gpt2-base", "sha256": "75" * 32},
        "model": {"source": "organism:gpt2", "sha256": "42" * 32},
        "probe": {"sha256": "ab" * 32, "d_model": 96},
        "prompts": {"source": "<list>", "n": 16, "sha256": "e1" * 32},
        "settings": {"positions": "own", "max_new_tokens": 20, "max_prompt_tokens": 32, "batch_size": 32},
    },
    "bootstrap": {"resamples": 200, "seed": 0, "n_chunks": 16},
    "counts": {"fail": 1, "pass": 2, "skip": 0},
    "claims": [
        {"id": "C0", "status": "pass", "reason": "", "checks": [
            {"name": "net", "op": ">", "threshold": 0.0, "value": 0.6162537626081931,
             "ci": [0.2856295915075442, 1.0315484041598726], "holds": True, "baseline": None}]},
        {"id": "C3", "status": "fail", "reason": "", "checks": [
            {"name": "share", "op": "<", "threshold": 0.1, "value": 0.10495220914056874,
             "ci": [0.074246207565769, 0.11277863187358153], "holds": False, "baseline": None}]},
        {"id": "C24", "status": "pass", "reason": "", "checks": [
            {"name": "heldout_accuracy", "op": ">=", "threshold": 0.9, "value": 0.9583333333333334,
             "ci": [0.9583333333333334, 0.9583333333333334], "holds": True, "baseline": None}]},
    ],
    "layers": {"mlp_out_proj_base": [0.1, -0.2, 0.3, 0.05]},
}


def _no_model_work(cache: Path) -> bool:
    """Nothing computed: the cache dir is absent or holds at most the memo of input file hashes."""
    return not cache.exists() or {p.name for p in cache.rglob("*") if p.is_file()} <= {"file-hashes.json"}


# --------------------------------------------------------------------------------------------
# 1. A --baseline claims.json


def _each_value(doc, fn):
    for c in doc["claims"]:
        for k in c["checks"]:
            k["value"] = fn(k["value"])
    return doc


def _mutated(fn):
    def text():
        doc = copy.deepcopy(GOOD)
        fn(doc)
        return json.dumps(doc)
    return text


def _nan_text():
    # json.dumps writes NaN/Infinity literals (allow_nan defaults to True); json.loads reads them
    doc = copy.deepcopy(GOOD)
    doc["claims"][1]["checks"][0]["value"] = math.nan
    return json.dumps(doc)


def _ci_infinity_text():
    doc = copy.deepcopy(GOOD)
    doc["claims"][0]["checks"][0]["ci"] = [0.1, math.inf]
    return json.dumps(doc)


def _huge_int_text():
    return json.dumps(GOOD).replace("0.6162537626081931", "1" + "0" * 400)


def _all_unmeasured(doc):
    for c in doc["claims"]:
        c["status"], c["checks"] = "skip", []


BASELINE_CASES = {
    # name: (file text (str or bytes, or a function giving it), phrases the error must hold)
    "values-as-strings": (_mutated(lambda d: _each_value(d, str)),
                          ["claims[0].checks[0].value", "the string '0.6162537626081931'", "a finite number"]),
    "null-values": (_mutated(lambda d: _each_value(d, lambda v: None)),
                    ["claims[0].checks[0].value is null", "expected a finite number"]),
    "no-claims": (_mutated(lambda d: d.__setitem__("claims", [])),
                  ["claims is an empty list", "a non-empty list of claim objects"]),
    "empty-checks": (_mutated(lambda d: [c.__setitem__("checks", []) for c in d["claims"]]),
                     ["claims[0].checks is an empty list", "at least one check", "'pass'"]),
    "claims-as-dict": (_mutated(lambda d: d.__setitem__("claims", {c["id"]: c for c in d["claims"]})),
                       ["claims is an object with keys ['C0', 'C24', 'C3']", "a non-empty list"]),
    "provenance-deleted": (_mutated(lambda d: d.pop("provenance")), ["provenance is missing", "comparable"]),
    "probe-sha-deleted": (_mutated(lambda d: d["provenance"]["probe"].pop("sha256")),
                          ["provenance.probe.sha256 is missing", "content hash"]),
    "max-new-tokens-as-string": (_mutated(lambda d: d["provenance"]["settings"].__setitem__("max_new_tokens", "20")),
                                 ["provenance.settings.max_new_tokens is the string '20'", "whole number"]),
    "nan-value": (_nan_text, ["claims[1].checks[0].value is NaN", "a finite number (or null)"]),
    "infinity-in-an-interval": (_ci_infinity_text, ["claims[0].checks[0].ci[1] is Infinity", "writes no NaN"]),
    "integer-beyond-float": (_huge_int_text, ["claims[0].checks[0].value is 1000", "a finite number"]),
    "boolean-value": (_mutated(lambda d: _each_value(d, lambda v: True)),
                      ["claims[0].checks[0].value is true (a boolean)"]),
    "duplicate-claim-id": (_mutated(lambda d: d["claims"][1].__setitem__("id", "C0")),
                           ["claims[1].id is the string 'C0'", "appears once"]),
    "nothing-measured": (_mutated(_all_unmeasured), ["holds no check with a finite value"]),
    "deeply-nested": ("[" * 100_000, ["nested deeper than the JSON reader allows"]),
    "unknown-schema-version": (_mutated(lambda d: d.__setitem__("schema", "mechclaims.claims/99")),
                               ["'mechclaims.claims/99'", f"reads {CLAIMS_SCHEMA}", "Rerun the release"]),
    "no-schema": (_mutated(lambda d: d.pop("schema")), ["schema is missing", "not a mechclaims claims.json"]),
    "a-json-list": ("[1, 2]", ["the document is a list of 2 item(s)", "a JSON object"]),
    "not-json": ("<html>a CI artifact page</html>", ["not valid JSON"]),
    "empty-file": ("", ["is empty"]),
    "not-utf8": (b"\xff\xfe{\x00}\x00", ["not UTF-8 text"]),
}


def _write_baseline(tmp_path: Path, case: str) -> Path:
    text = BASELINE_CASES[case][0]
    text = text() if callable(text) else text
    p = tmp_path / "release" / "claims.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


@pytest.mark.parametrize("case", sorted(BASELINE_CASES))
def test_a_bad_baseline_report_is_refused(case, tmp_path):
    from mechclaims.baseline import read_report

    p = _write_baseline(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        read_report(str(p))
    msg = str(info.value)
    assert f"--baseline {str(p)!r}" in msg
    for phrase in BASELINE_CASES[case][1]:
        assert phrase in msg, (phrase, msg)
    assert "\n" not in msg and len(msg) < 900  # one readable line, not a dump of the document


def test_a_good_baseline_report_is_read(tmp_path):
    from mechclaims.baseline import read_report, report_values

    p = tmp_path / "claims.json"
    p.write_text(json.dumps(GOOD))
    assert set(report_values(read_report(str(p)))) == {"C0", "C3", "C24"}


@pytest.mark.parametrize("status, checks", [
    ("skip", []),                                              # a claim that did not apply
    ("fail", [{"name": "share", "value": None}]),              # a metric that was not finite
    ("inconclusive", [{"name": "share", "value": 0.1}]),       # a status of a later report version
], ids=["skipped", "non-finite-fail", "other-status"])
def test_what_a_report_legitimately_holds_is_accepted(status, checks):
    from mechclaims.schema import validate_claims_json

    doc = copy.deepcopy(GOOD)
    doc["claims"].append({"id": "C9", "status": status, "checks": checks})
    validate_claims_json(doc, "--baseline x")


def test_the_written_schema_is_the_one_read():
    from mechclaims.report import SCHEMA
    from mechclaims.schema import CLAIMS_SCHEMA, READABLE

    assert SCHEMA == CLAIMS_SCHEMA and SCHEMA in READABLE


# --------------------------------------------------------------------------------------------
# 2. --bootstrap: 0 (no interval) or at least 20 resamples


@pytest.mark.parametrize("n", [1, 2, 19])
def test_too_few_bootstrap_resamples_are_refused(n, tmp_path):
    from mechclaims.config import MIN_BOOTSTRAP, build_config

    assert MIN_BOOTSTRAP == 20
    with pytest.raises(ConfigError, match=f"bootstrap in the command line is {n} resamples.*at least 20.*or 0"):
        build_config({"bootstrap": n})
    f = tmp_path / "claims.toml"
    f.write_text(f"bootstrap = {n}\n")
    with pytest.raises(ConfigError, match=f"{f}.*at least 20"):
        build_config({}, claims_config=str(f))


@pytest.mark.parametrize("n", [0, 20, 200])
def test_no_interval_or_enough_resamples_are_accepted(n):
    from mechclaims.config import build_config

    assert build_config({"bootstrap": n}).bootstrap == n


# --------------------------------------------------------------------------------------------
# 3. --device-map: the devices must exist here, the modules in the model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from tests import tiny

    root = tmp_path_factory.mktemp("iv-gpt2")
    base, model = tiny.make_pair(root / "gpt2", "gpt2", tiny.make_tokenizer(root / "tok"))
    return base, model


def _gpt2_config(gpt2_dir) -> dict:
    return json.loads((Path(gpt2_dir[0]) / "config.json").read_text())


@pytest.mark.parametrize("device_map, cuda_count, phrase", [
    ({"a": 99}, 0, "'a' is mapped to 99 (cuda:99), but this machine has no CUDA device"),
    ({"transformer.h.0": "cuda"}, 0, "no CUDA device"),
    ({"transformer.h.0": 0, "transformer.h.1": "cuda:2"}, 2, "'cuda:2' (cuda:2), but this machine has 2 CUDA"),
], ids=["index-99-no-gpu", "cuda-no-gpu", "cuda2-of-two"])
def test_a_device_the_machine_lacks_is_refused(device_map, cuda_count, phrase):
    from mechclaims.devices import check_map_devices

    with pytest.raises(ConfigError, match="--device-map") as info:
        check_map_devices(device_map, cuda_count=cuda_count, mps_available=False)
    assert phrase in str(info.value)
    check_map_devices({"a": 1, "b": "cuda:0"}, cuda_count=2, mps_available=False)
    check_map_devices({"a": "cpu", "b": "disk"}, cuda_count=0, mps_available=False)
    check_map_devices("auto", cuda_count=0, mps_available=False)  # a strategy places on what exists


def test_the_machine_is_asked_when_no_count_is_given():
    from mechclaims.devices import check_map_devices

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: cuda:0 exists")
    with pytest.raises(ConfigError, match="no CUDA device"):
        check_map_devices({"a": 0})


@pytest.mark.parametrize("device_map, phrases", [
    ({"a": "cpu"}, ["1 module(s)", "does not have: 'a'", "transformer.h.0 .. transformer.h.1", "lm_head"]),
    ({"transformer.h.00": "cpu", "transformer.wte": "cpu"},
     ["'transformer.h.00' -> 'transformer.h.0'?"]),
    ({"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.ln_f": "cpu"},
     ["no device for 12 weight(s)", "transformer.h.1"]),
], ids=["unknown-module", "typo", "a-block-unplaced"])
def test_modules_the_model_lacks_or_leaves_unplaced_are_refused(device_map, phrases, gpt2_dir):
    from mechclaims.devices import check_map_modules

    with pytest.raises(ConfigError) as info:
        check_map_modules(device_map, _gpt2_config(gpt2_dir), "the tiny base")
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))


@pytest.mark.parametrize("device_map", [
    {"": "cpu"},
    {"transformer": "cpu"},  # lm_head is tied to the embeddings: placed with them
    {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": "disk",
     "transformer.ln_f": "cpu", "lm_head": "cpu"},
    {"transformer.h.0.mlp.c_fc.weight": "cpu", "transformer": "cpu"},  # a parameter name is a key too
    "auto",
], ids=["whole", "tied-head", "every-module", "parameter-key", "strategy"])
def test_maps_that_place_every_weight_are_accepted(device_map, gpt2_dir):
    from mechclaims.devices import check_map_modules

    check_map_modules(device_map, _gpt2_config(gpt2_dir), "the tiny base")


def test_the_loader_refuses_an_unknown_module_before_reading_weights(gpt2_dir, tmp_path):
    """Library use (``load_model``) gets the same check: the weights file is garbage, so reaching
    it would raise another error."""
    import shutil

    from mechclaims.loading import load_model

    d = tmp_path / "garbage-weights"
    shutil.copytree(gpt2_dir[0], d)
    (d / "model.safetensors").write_bytes(b"\x00 not weights")
    with pytest.raises(ConfigError, match="does not have: 'a'"):
        load_model(str(d), memo=False, device_map={"a": "cpu"})


# --------------------------------------------------------------------------------------------
# 4. A --claims-config with [tool.mechclaims] and settings at its top level


@pytest.mark.parametrize("text, named", [
    ("[tool.mechclaims]\nbootstrap = 50\n[thresholds]\nC3 = 0.5\n", "([thresholds])"),
    ("bootstrap = 50\n[tool.mechclaims.thresholds]\nC3 = 0.5\n", "(bootstrap)"),
    ("[tool.mechclaims]\nseed = 1\n[regression]\nC3 = 0.1\n[thresholds]\nC3 = 0.5\n", "([regression], [thresholds])"),
], ids=["thresholds-table", "top-level-bootstrap", "two-tables"])
def test_a_claims_config_mixing_both_layouts_is_refused(text, named, tmp_path):
    from mechclaims.config import build_config

    f = tmp_path / "claims.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_config({}, claims_config=str(f))
    msg = str(info.value)
    assert str(f) in msg and "[tool.mechclaims]" in msg and named in msg and "silently dropped" in msg


def test_either_layout_alone_is_read(tmp_path):
    from mechclaims.config import build_config

    top = tmp_path / "top.toml"
    top.write_text("bootstrap = 50\n[thresholds]\nC3 = 0.5\n")
    tool = tmp_path / "pyproject.toml"  # a pyproject passed as --claims-config: [project] is not ours
    tool.write_text('[project]\nname = "x"\n[tool.mechclaims]\nbootstrap = 50\n'
                    '[tool.mechclaims.thresholds]\nC3 = 0.5\n')
    for f in (top, tool):
        cfg = build_config({}, claims_config=str(f))
        assert cfg.bootstrap == 50 and dict(cfg.thresholds["C3"]) == {"*": 0.5}


def test_a_claims_config_that_is_not_utf8(tmp_path):
    from mechclaims.config import build_config

    f = tmp_path / "claims.toml"
    f.write_bytes("bootstrap = 50 # r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        build_config({}, claims_config=str(f))


# --------------------------------------------------------------------------------------------
# 5. A UTF-8 byte-order mark in a prompts file


@pytest.mark.parametrize("name, data", [
    ("p.txt", "hello there\nsecond prompt\n"),
    ("p.jsonl", '{"prompt": "hello there"}\n{"prompt": {"text": "second prompt"}}\n'),
    ("p.csv", "prompt\nhello there\nsecond prompt\n"),
])
def test_a_byte_order_mark_is_not_part_of_prompt_1(name, data, tmp_path):
    from mechclaims.prompts import prompts_sha256, read_prompts

    plain, bom = tmp_path / "plain" / name, tmp_path / "bom" / name
    for p, prefix in ((plain, b""), (bom, b"\xef\xbb\xbf")):
        p.parent.mkdir()
        p.write_bytes(prefix + data.encode())
    got = read_prompts(bom)
    assert got == ["hello there", "second prompt"] == read_prompts(plain)
    assert prompts_sha256(got) == prompts_sha256(read_prompts(plain))  # a baseline stays comparable


def test_a_utf16_prompts_file_is_named(tmp_path):
    from mechclaims.prompts import read_prompts

    p = tmp_path / "p.txt"
    p.write_bytes("hello\n".encode("utf-16"))
    with pytest.raises(PromptError, match="UTF-16.*expected UTF-8"):
        read_prompts(p)


# --------------------------------------------------------------------------------------------
# 6. Scorers: a setup error, never a traceback


def test_a_binary_lexicon_is_a_scorer_error(tmp_path):
    from mechclaims.scoring import resolve_scorer_spec

    p = tmp_path / "binary.txt"
    p.write_bytes(b"idiot\nshut up\n\x89PNG\r\n\x1a\n\x00\xff")  # an image passed as the lexicon
    with pytest.raises(ScorerError) as info:
        resolve_scorer_spec(f"lexicon:{p}")
    msg = str(info.value)
    assert f"{str(p)!r}:3 is not UTF-8" in msg and "one toxic word or phrase per line" in msg


def test_a_lexicon_with_a_byte_order_mark(tmp_path):
    from mechclaims.scoring import LexiconScorer

    p = tmp_path / "lexicon.txt"
    p.write_bytes(b"\xef\xbb\xbfidiot\nshut up\n")
    s = LexiconScorer(p)
    assert s.phrases == ["idiot", "shut up"] and s.score(["you idiot"]).tolist() == [1.0]


@pytest.fixture
def user_scorers():
    from mechclaims import scoring

    before = dict(scoring.SCORERS)
    yield scoring
    scoring.SCORERS.clear()
    scoring.SCORERS.update(before)


def test_a_user_scorer_check_that_raises_is_one_setup_error(user_scorers):
    def check(arg, **_):
        return int(arg)  # ValueError on a non-number: not a ScorerError

    user_scorers.register_scorer("perspective", lambda arg, **_: None, "perspective:N: the user's own", check)
    with pytest.raises(ScorerError) as info:
        user_scorers.resolve_scorer_spec("perspective:many")
    msg = str(info.value)
    assert "'perspective' scorer refused its argument 'many'" in msg and "ValueError" in msg
    assert "expected perspective:N" in msg
    assert user_scorers.resolve_scorer_spec("perspective:3") == "perspective:3"

    def refuses(arg, **_):
        raise ScorerError("perspective needs a key file")

    user_scorers.register_scorer("perspective", lambda arg, **_: None, "perspective:N: the user's own", refuses)
    with pytest.raises(ScorerError, match="^perspective needs a key file$"):  # its own message, unchanged
        user_scorers.resolve_scorer_spec("perspective:3")


def test_an_unknown_scorer_lists_the_scorers_cleanly():
    from mechclaims.scoring import resolve_scorer_spec

    with pytest.raises(ScorerError) as info:
        resolve_scorer_spec("detox")
    msg = str(info.value)
    assert ("the scorers are: auto, lexicon:PATH, detoxify[:original|unbiased|multilingual], probe, "
            "profanity-check." in msg), msg
    assert "detoxify[," not in msg


@pytest.mark.parametrize("name", ["my:scorer", "", " padded "])
def test_a_scorer_name_that_cannot_be_selected_is_refused(name, user_scorers):
    with pytest.raises(ScorerError, match="register_scorer"):
        user_scorers.register_scorer(name, lambda arg, **_: None, "x")


# --------------------------------------------------------------------------------------------
# End to end: pytest exit status 4, one message, nothing computed


def _claims(pytester, *args, cache: Path):
    return pytester.runpytest_inprocess(CLAIMS, "-k", "C0 or C3", "--cache-dir", str(cache), "-p", "no:randomly",
                                        "--report", str(pytester.path / "out" / "claims.html"), *args)


@pytest.fixture
def few_prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(ORG.prompts.read_text().splitlines()[:16]) + "\n")
    return p


@pytest.mark.parametrize("case", ["deeply-nested", "nan-value", "claims-as-dict"])
def test_pytest_refuses_a_bad_baseline_before_any_model_work(case, pytester, few_prompts, tmp_path):
    cache = tmp_path / "cache"
    res = _claims(pytester, "--prompts", str(few_prompts), "--baseline", str(_write_baseline(tmp_path, case)),
                  cache=cache)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    err = res.stderr.str()
    assert BASELINE_CASES[case][1][0] in err and "INTERNALERROR" not in err + res.stdout.str()
    assert _no_model_work(cache)


@pytest.mark.parametrize("args, phrase", [
    (["--bootstrap", "1"], "at least 20"),
    (["--scorer", "lexicon:BINARY"], "is not UTF-8"),
    (["--claims-config", "MIXED"], "silently dropped"),
], ids=["bootstrap-1", "binary-lexicon", "mixed-claims-config"])
def test_pytest_refuses_bad_options_before_any_model_work(args, phrase, pytester, few_prompts, tmp_path):
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    (tmp_path / "mixed.toml").write_text("[tool.mechclaims]\nbootstrap = 50\n[thresholds]\nC3 = 0.5\n")
    args = [a.replace("BINARY", str(tmp_path / "binary.txt")).replace("MIXED", str(tmp_path / "mixed.toml"))
            for a in args]
    cache = tmp_path / "cache"
    res = _claims(pytester, "--prompts", str(few_prompts), *args, cache=cache)
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()[-2000:]
    assert phrase in res.stderr.str() and "INTERNALERROR" not in res.stderr.str() + res.stdout.str()
    assert _no_model_work(cache)


def test_pytest_refuses_a_device_map_for_a_missing_gpu(pytester, gpt2_dir, tmp_path):
    from mechclaims.probe import Probe

    if torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    d_model = _gpt2_config(gpt2_dir)["n_embd"]
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).save(
        tmp_path / "probe.safetensors")
    (tmp_path / "prompts.txt").write_text("one prompt\nanother prompt\n")
    cache = tmp_path / "cache"
    res = _claims(pytester, "--base", str(gpt2_dir[0]), "--model", str(gpt2_dir[1]), "--probe",
                  str(tmp_path / "probe.safetensors"), "--prompts", str(tmp_path / "prompts.txt"),
                  "--device-map", '{"a": 99}', cache=cache)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "'a' is mapped to 99 (cuda:99)" in res.stderr.str()
    assert _no_model_work(cache)


def test_the_report_a_run_writes_is_a_valid_baseline(pytester, few_prompts, tmp_path):
    """What this tree writes, this tree reads: a real organism run's claims.json validates."""
    from mechclaims.baseline import read_report, report_values

    res = _claims(pytester, "--prompts", str(few_prompts), "--bootstrap", "20", cache=tmp_path / "cache")
    assert res.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), res.stdout.str()[-2000:]
    doc = read_report(str(pytester.path / "out" / "claims.json"))
    assert set(report_values(doc)) == {"C0", "C3"}


def test_every_error_here_is_a_setup_error():
    for exc in (ConfigError, PromptError, ScorerError):
        assert issubclass(exc, MechclaimsError) and exc.setup
