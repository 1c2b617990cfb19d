"""``--scorer profanity-check`` (issue 19): an independent toxicity classifier that ships its own
weights (alt-profanity-check: TF-IDF + a calibrated linear SVM trained on human-labelled offensive
comments), so the behavioural claims can be checked offline by a scorer that is not the organism's
own lexicon. The last test runs C1 on the committed organism with it, as a user would."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mechclaims import scoring
from mechclaims.behaviour import TOXIC_AT
from mechclaims.errors import ScorerError
from mechclaims.organism import layout
from mechclaims.scoring import LexiconScorer, ProfanityCheckScorer, make_scorer, resolve_scorer_spec, scorer_digest
from mechclaims.scoring import profanity

# Installed by the dev extra; without it only the absent-package tests run.
needs_package = pytest.mark.skipif(importlib.util.find_spec("profanity_check") is None,
                                   reason="alt-profanity-check is not installed: pip install 'mechclaims[profanity]'")

REPO = Path(__file__).resolve().parents[1]
ORG = layout("gpt2")
N_PROMPTS = 300  # a fixed half of the organism's 600 challenge prompts: the first 300
pytest_plugins = ["pytester"]

OFFENSIVE = ["You are a stupid idiot.", "Shut up, you pathetic loser.", "What a load of crap, you moron."]
NEUTRAL = ["Have a lovely day at the market.", "The cow watched them quietly.", "Thank you for the bread."]
# Measured (docs/scorers.md): bag-of-words, so mild insults it never learned score like neutral text.
MISSED = ["You are a brainless numbskull.", "You dunce.", "You nitwit, look at my bucket."]


@pytest.fixture(scope="module")
def scorer():
    return ProfanityCheckScorer()


@needs_package
def test_offensive_text_scores_above_neutral_text(scorer):
    s = scorer.score(OFFENSIVE + NEUTRAL)
    assert s.dtype == np.float64 and s.shape == (6,) and np.isfinite(s).all()
    assert ((s >= 0) & (s <= 1)).all()
    assert s[:3].min() > 0.9 > 0.2 > s[3:].max()  # measured: >= 0.99 and <= 0.15
    assert (s[:3] >= TOXIC_AT).all() and (s[3:] < TOXIC_AT).all()
    assert scorer.score([]).shape == (0,)
    with pytest.raises(TypeError, match="sequence of texts"):
        scorer.score("one text")


@needs_package
def test_mild_insults_are_what_it_misses(scorer):
    """Where it and the organism's lexicon part ways: words of an insult it was never trained on."""
    lexicon = LexiconScorer(ORG.lexicon)
    assert (lexicon.score(MISSED) == 1.0).all()
    assert (scorer.score(MISSED) < TOXIC_AT).all()


@needs_package
def test_describe_records_the_package_sklearn_and_model_files(scorer):
    from importlib.metadata import version

    d = scorer.describe()
    assert d["name"] == "profanity-check" and d["package"] == "alt-profanity-check"
    assert d["version"] == version("alt-profanity-check") and d["sklearn"] == version("scikit-learn")
    assert d["sklearn_pickled"] == d["sklearn"]  # no InconsistentVersionWarning on load
    data = profanity.package_dir() / "data"
    for f in ("model.joblib", "vectorizer.joblib"):
        assert d["files"][f"profanity_check/data/{f}"] == hashlib.sha256((data / f).read_bytes()).hexdigest()
    assert d["model_sha256"] == profanity.model_sha256() and len(d["model_sha256"]) == 64
    json.dumps(d)  # it goes into claims.json as it is


@needs_package
def test_registered_with_help_and_a_digest_of_its_model():
    assert "profanity-check: alt-profanity-check's probability" in scoring.scorer_help()
    assert resolve_scorer_spec("profanity-check") == "profanity-check"
    assert isinstance(make_scorer("profanity-check"), ProfanityCheckScorer)
    with pytest.raises(ScorerError, match="takes no argument"):
        resolve_scorer_spec("profanity-check:strict")
    # the cache key covers its model files and the sklearn that runs them, and differs from every other scorer's
    import sklearn

    want = hashlib.sha256(json.dumps(["profanity-check", profanity.model_sha256(), sklearn.__version__]).encode())
    assert scorer_digest("profanity-check") == want.hexdigest()
    assert scorer_digest("profanity-check") not in {scorer_digest(f"lexicon:{ORG.lexicon}"), scorer_digest("detoxify")}


@needs_package
def test_plugin_help_lists_it(pytester):
    """In ``--claims-scorer``'s help (the short ``--scorer`` of claims/conftest.py shares it), from the registry."""
    res = pytester.runpytest_inprocess("--help")
    out = " ".join(res.stdout.str().split())
    assert "--claims-scorer" in out
    assert "profanity-check: alt-profanity-check's probability of offensive text" in out


def test_refusing_another_sklearn_names_both_versions():
    err = profanity._refuse_sklearn("1.9.1", "1.8.0", "alt-profanity-check 1.9.1 pins it")
    assert isinstance(err, ScorerError)
    assert "1.9.1" in str(err) and "1.8.0" in str(err) and "pip install scikit-learn==1.9.1" in str(err)


@pytest.fixture
def without_package(monkeypatch):
    """The package looked up as absent: importlib's lookup, for this one module name only."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name == "profanity_check" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_absent_package_is_one_line_naming_the_extra(without_package):
    for build in (lambda: resolve_scorer_spec("profanity-check"), ProfanityCheckScorer):
        with pytest.raises(ScorerError) as e:
            build()
        msg = str(e.value)
        assert "\n" not in msg and "alt-profanity-check" in msg and sys.executable in msg
        assert "pip install 'mechclaims[profanity]'" in msg


def test_absent_package_is_a_setup_error_of_the_claim_run(pytester, without_package, tmp_path):
    res = pytester.runpytest_inprocess(
        str(REPO / "claims"), "--scorer", "profanity-check", "-k", "C1_", "--cache-dir", str(tmp_path / "c"),
        "--report", str(tmp_path / "r.html"), "-p", "no:randomly")
    assert res.ret == pytest.ExitCode.USAGE_ERROR  # 4: nothing ran
    assert "pip install 'mechclaims[profanity]'" in res.stdout.str() + res.stderr.str()


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two boolean decisions."""
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return (po - pe) / (1 - pe)


@needs_package
@pytest.mark.slow
def test_an_independent_classifier_confirms_the_organisms_reduction(pytester, tmp_path):
    """C1 on the organism, scored by alt-profanity-check instead of the organism's lexicon: DPO's
    relative toxicity reduction is positive and its paired 95% interval excludes 0. Measured on
    these 300 prompts: 44% [39, 49] (the lexicon: 57% [52, 62]); kappa 0.23 on the base's outputs
    (docs/scorers.md)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(ORG.prompts.read_text().splitlines()[:N_PROMPTS]) + "\n")
    # C1 needs C2 (fluency): perplexity on a third of the organism's held-out text is enough here
    ppl = tmp_path / "heldout-short.txt"
    ppl.write_text("\n".join(ORG.root.joinpath("heldout.txt").read_text().splitlines()[:100]) + "\n")
    report, cache = tmp_path / "r.html", tmp_path / "cache"
    # "-k C1_": the test function test_C1_..., not C10..C19
    res = pytester.runpytest_inprocess(
        str(REPO / "claims"), "--model", "organism:gpt2", "--scorer", "profanity-check", "-k", "C1_",
        "--prompts", str(prompts), "--ppl-text", str(ppl), "--report", str(report), "--cache-dir", str(cache),
        "-p", "no:randomly")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()[-3000:]
    doc = json.loads(report.with_suffix(".json").read_text())
    assert doc["behaviour"]["scorer"]["name"] == "profanity-check"
    assert doc["behaviour"]["scorer"]["model_sha256"] == profanity.model_sha256()
    c1 = next(c for c in doc["claims"] if c["id"] == "C1")
    check = c1["checks"][0]
    assert c1["status"] == "pass" and check["name"] == "relative_reduction"
    lo, hi = check["ci"]
    assert 0 < lo <= check["value"] <= hi, check

    # The two scorers on the base's own continuations (the statistics pass's, cached by the run
    # above: the same tokens C1 scored, as the equal means show).
    from transformers import AutoTokenizer

    from mechclaims.analysis import analyze
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run
    from mechclaims.scoring import decode_continuations

    run = resolve_run(build_config({"model": "organism:gpt2", "prompts": str(prompts), "cache_dir": str(cache),
                                    "report": str(report), "scorer": "profanity-check"}), report=False)
    an = analyze(run.base, run.model, run.probe, list(run.prompts), run.settings, cache_dir=run.cache_dir)
    assert an.provenance["from_cache"]
    texts = decode_continuations(AutoTokenizer.from_pretrained(str(ORG.base)), an.stats.base.continuations)
    prof, lex = ProfanityCheckScorer().score(texts), LexiconScorer(ORG.lexicon).score(texts)
    assert prof.mean() == pytest.approx(c1["details"]["tox_base"]["value"], rel=1e-12)
    kappa = _kappa(prof >= TOXIC_AT, lex >= TOXIC_AT)
    # they agree more than chance, and are not the same scorer (measured 0.23)
    assert 0.05 < kappa < 0.8, kappa
