"""Nothing lost, nothing stale (issue 18): a cached chunk is checked before it is used, a file's
memoised hash follows the file, a sharded index cannot reach outside its directory, the scorer's
cache key follows its content, a model hashes the same however it is named, and a probe trained
on another model fails C24. Each test names what the code did before."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.cache import CacheIntegrityWarning, ResultCache, arrays_sha256, load_arrays, save_arrays
from mechclaims.errors import ModelSourceError
from mechclaims.probe import Probe
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
# One batch per chunk: a recomputed chunk is bit-identical to a fresh run's.
CHUNKED = dict(max_new_tokens=3, batch_size=3, max_chunks=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, gpt2_pair):
    return tiny.probe_and_prompts(tmp_path_factory.mktemp("integrity"), gpt2_pair)


def _analyze(files, cache):
    from mechclaims.analysis import analyze
    from mechclaims.stats import StatsSettings

    return analyze(files["base"], files["model"], files["probe"], files["prompts"], StatsSettings(**CHUNKED),
                   cache_dir=cache)


@pytest.fixture(scope="module")
def clean(files):
    return _analyze(files, False)


def _pair_chunks(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("chunk-*.safetensors")
                  if json.loads((p.parent / "key.json").read_text())["kind"] == "pair-stats")


def _assert_same_stats(a, b):
    for side in ("base", "model"):
        x, y = getattr(a.stats, side), getattr(b.stats, side)
        for name in ("act_sum", "mlp_out_proj_sum", "resid_post_proj_sum", "continuations"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=f"{side}.{name}")
    np.testing.assert_array_equal(a.weights.vw_dpo, b.weights.vw_dpo)


def _flip_bit(path: Path, tensor: str, byte: int, bit: int = 6) -> None:
    """Flip one bit of ``tensor``'s data in a safetensors file, leaving its header intact."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n + json.loads(raw[8:8 + n])[tensor]["data_offsets"][0]
    raw[start + byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


# --- chunks ------------------------------------------------------------------------------------


def test_a_bit_flip_in_a_chunk_is_recomputed_with_a_warning(files, clean, tmp_path):
    """Before: the flipped value was used silently (here base_act_sum[1, 0, 5] changed)."""
    cache = tmp_path / "c"
    _analyze(files, cache)
    bad = _pair_chunks(cache)[1]
    _flip_bit(bad, "base_act_sum", byte=8 * 5 + 7)  # a float64's exponent: the value changes wildly
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(bad)) + ".*do not match their recorded sha256"):
        again = _analyze(files, cache)
    _assert_same_stats(again, clean)
    assert bad.with_name(bad.name + ".bad").is_file() and bad.is_file()  # kept aside; rewritten clean
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheIntegrityWarning)
        third = _analyze(files, cache)  # the rewritten chunk passes its check
    assert third.provenance["from_cache"]
    _assert_same_stats(third, clean)


def test_a_chunk_copied_to_another_index_is_detected(files, clean, tmp_path):
    """Before: chunk 0 copied over chunk 2 was used as chunk 2, silently."""
    cache = tmp_path / "c"
    _analyze(files, cache)
    chunks = _pair_chunks(cache)
    shutil.copy(chunks[0], chunks[2])
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(chunks[2])) + ".*holds chunk 0, not chunk 2"):
        again = _analyze(files, cache)
    _assert_same_stats(again, clean)


def test_a_chunk_holding_a_non_finite_value_is_recomputed_with_a_warning(files, clean, tmp_path):
    """Before: every rerun failed with 'non-finite values in act_base', naming no cache file."""
    cache = tmp_path / "c"
    _analyze(files, cache)
    bad = _pair_chunks(cache)[1]
    arrays, meta = load_arrays(bad)
    arrays["base_act_sum"] = arrays["base_act_sum"].copy()
    arrays["base_act_sum"].flat[3] = np.nan
    save_arrays(bad, arrays, {**meta, "sha256": arrays_sha256(arrays)})  # a NaN with a valid digest
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(bad)) + ".*1 non-finite value.*base_act_sum"):
        again = _analyze(files, cache)
    _assert_same_stats(again, clean)


def test_chunks_without_a_digest_and_from_another_entry_are_recomputed(tmp_path):
    """Chunks written before the digests (an older mechclaims) and a chunk of another entry are
    refused; a NaN the writer declared (a perplexity not measured) is kept."""
    cache = ResultCache(tmp_path)
    entry = cache.entry({"kind": "t", "n": 1})
    arrays = {"x": np.arange(4.0), "n": np.array(3)}
    entry.save_chunk(0, arrays)
    np.testing.assert_array_equal(entry.load_chunk(0)["x"], arrays["x"])

    old = entry._chunk_path(0)
    save_arrays(old, arrays, {"key_digest": entry.digest, "chunk": 0})  # the pre-digest format
    with pytest.warns(CacheIntegrityWarning, match="carries no content digest"):
        assert entry.load_chunk(0) is None
    assert not old.exists() and old.with_name(old.name + ".bad").exists()

    other = cache.entry({"kind": "t", "n": 2})
    other.save_chunk(0, arrays)
    other._chunk_path(0).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(other._chunk_path(0), entry._chunk_path(0))
    with pytest.warns(CacheIntegrityWarning, match="belongs to another cache entry"):
        assert entry.load_chunk(0) is None

    beh = cache.entry({"kind": "behaviour-like"}, nonfinite_ok=("ppl",))
    beh.save_chunk(0, {"scores": np.zeros(3), "ppl": np.array(np.nan)})
    assert np.isnan(beh.load_chunk(0)["ppl"])
    strict = cache.entry({"kind": "strict"})
    strict.save_chunk(0, {"ppl": np.array(np.nan)})  # would be refused on read: not written
    assert strict.load_chunk(0) is None and not strict._chunk_path(0).exists()


# --- the file-hash memo --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_a_same_size_same_mtime_replacement_gets_a_new_hash(tmp_path, how):
    """Before: the memo served the old file's sha256 (key: path, size, mtime)."""
    from mechclaims.cache import sha256_file, sha256_file_memo

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 4096)
    old = sha256_file_memo(f, tmp_path / "memo")
    st = f.stat()
    time.sleep(0.05)  # past the kernel's ctime granularity (a clock tick)
    if how == "in place":  # cp -p over an existing file
        f.write_bytes(b"b" * 4096)
    else:  # rsync -a, tar x: a new file renamed into place
        tmp = tmp_path / ".model.tmp"
        tmp.write_bytes(b"b" * 4096)
        os.replace(tmp, f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    new = sha256_file_memo(f, tmp_path / "memo")
    assert new == sha256_file(f) != old
    assert len(json.loads((tmp_path / "memo" / "file-hashes.json").read_text())) == 1  # one record per path


# --- sharded checkpoints -------------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path, gpt2_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(gpt2_pair[1]).save_pretrained(d, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(gpt2_pair[1]).save_pretrained(d)
    index = d / "model.safetensors.index.json"
    assert index.is_file()
    return d, index


def _rename_shard(index: Path, old: str, new: str) -> None:
    data = json.loads(index.read_text())
    data["weight_map"] = {k: (new if v == old else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))


def test_a_shard_outside_the_model_directory_is_refused_before_any_weights_load(sharded):
    """Before: ../x.safetensors was loaded by transformers and not part of the model's sha256."""
    from mechclaims.loading import load_model, open_hf
    from mechclaims.sources import Source, resolve_source

    d, index = sharded
    shard = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    outside = d.parent / shard
    shutil.move(d / shard, outside)
    outside.write_bytes(b"not safetensors")  # were it read, the error would be another one
    _rename_shard(index, shard, f"../{shard}")
    for call in (lambda: resolve_source(str(d)), lambda: load_model(str(d), memo=False),
                 lambda: open_hf(Source("dir", str(d), sha256="0" * 64))):  # a record made by hand too
        with pytest.raises(ModelSourceError, match=re.escape(str(index)) + f".*'../{re.escape(shard)}'.*outside the "
                           "model directory.*Move the shard into the directory"):
            call()


def test_every_shard_the_index_names_is_hashed(sharded):
    from mechclaims.sources import resolve_source

    d, index = sharded
    shard = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    (d / shard).rename(d / "part-a.weights")  # a name the suffix rule alone would skip
    _rename_shard(index, shard, "part-a.weights")
    before = resolve_source(str(d)).sha256
    raw = bytearray((d / "part-a.weights").read_bytes())
    raw[-1] ^= 1  # the last byte of the last tensor
    (d / "part-a.weights").write_bytes(bytes(raw))
    assert resolve_source(str(d)).sha256 != before
    (d / "part-a.weights").unlink()
    with pytest.raises(ModelSourceError, match="names the shard 'part-a.weights', which does not exist"):
        resolve_source(str(d))


# --- the scorer's key ----------------------------------------------------------------------------


def test_a_lexicon_edited_in_place_gives_new_scores(files, tmp_path):
    """Before: the behaviour key held the spec 'lexicon:PATH' only, so the old scores were reused."""
    from transformers import AutoTokenizer

    from mechclaims.choices import SET_BASE
    from mechclaims.claim import Check, ClaimSpec
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run
    from mechclaims.scoring import LexiconScorer, decode_continuations
    from mechclaims.suite import ClaimSuite

    lex = tmp_path / "lexicon.txt"
    lex.write_text("qqqzzzxx\n")
    spec = ClaimSpec("C95", "base-toxicity", "s", (Check("tox", ">=", 0.0),), "src", "pv",
                     lambda v, ctx: {"tox": v.tox(SET_BASE)}, needs="G", interventions=())
    cli = {"model": files["model"], "base": files["base"], "probe": files["probe"], "prompts": files["prompts"],
           "max_new_tokens": 4, "report": str(tmp_path / "out" / "claims.html"), "bootstrap": 0,
           "scorer": f"lexicon:{lex}", "cache_dir": str(tmp_path / "cache")}

    def base_toxicity():
        suite = ClaimSuite(resolve_run(build_config(cli)), {"C95": spec})
        suite.compute()
        return suite, suite.results["C95"].checks[0].value

    suite, tox = base_toxicity()
    assert tox == 0.0
    texts = decode_continuations(AutoTokenizer.from_pretrained(files["base"]), suite.analysis.stats.base.continuations)
    words = sorted({w for t in texts for w in re.findall(r"\b[A-Za-z]+\b", t)})
    assert words, texts
    lex.write_text("\n".join(words) + "\n")  # the same path, new content
    _, tox = base_toxicity()
    assert tox > 0.0
    assert tox == pytest.approx(float(LexiconScorer(lex).score(texts).mean()), abs=1e-12)


def test_a_registered_scorer_is_keyed_on_its_code():
    from mechclaims.scoring import SCORERS, register_scorer, scorer_digest

    class Fixed:
        name = "fixed"

        def __init__(self, value):
            self.value = value

        def score(self, texts):
            return np.full(len(texts), self.value)

        def describe(self):
            return {"name": self.name, "value": self.value}

    try:
        register_scorer("fixed", lambda arg, **_: Fixed(float(arg or 0)), "fixed[:V]: every text scores V")
        a, b = scorer_digest("fixed:0.5"), scorer_digest("fixed:0.25")
        register_scorer("fixed", lambda arg, **_: Fixed(1 - float(arg or 0)), "fixed[:V]: every text scores 1 - V")
        assert len({a, b, scorer_digest("fixed:0.5")}) == 3  # the argument and the factory's code count
        assert scorer_digest("probe") == scorer_digest("probe") and scorer_digest(None) == ""
    finally:
        SCORERS.pop("fixed", None)


# --- one model, one hash -------------------------------------------------------------------------


def test_an_organism_and_its_directory_have_the_same_sha256():
    """Before: organism:gpt2-base hashed its model.safetensors alone (75e3ab63...), its directory
    hashed every model file (5e8851cf...); the committed probes record the directory's hash."""
    from mechclaims.organism import layout
    from mechclaims.probe import load_probe
    from mechclaims.sources import resolve_source

    for arch in ("gpt2", "llama"):
        lay = layout(arch)
        base = resolve_source(f"organism:{arch}-base").sha256
        assert base == resolve_source(str(lay.base)).sha256
        assert resolve_source(f"organism:{arch}").sha256 == resolve_source(str(lay.dpo)).sha256
        assert load_probe(lay.probe).metadata["model_sha256"] == base  # C24 holds on the organism
    lora = resolve_source("organism:gpt2-lora").sha256
    assert lora == resolve_source(str(layout("gpt2").lora), base=str(layout("gpt2").base)).sha256
    assert lora == resolve_source(f"organism:gpt2-base::{layout('gpt2').lora}").sha256


# --- C24 -----------------------------------------------------------------------------------------


def test_a_probe_trained_on_another_base_fails_C24(files, tmp_path):
    """Before: C24 read the held-out accuracy alone and passed."""
    from claims.dpo_toxicity.test_probe_validity import test_C24_probe_validity
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run
    from mechclaims.sources import resolve_source
    from mechclaims.suite import ClaimSuite

    spec = test_C24_probe_validity.mechclaims_spec
    base_sha = resolve_source(files["base"]).sha256
    other = resolve_source("organism:gpt2-base").sha256
    direction = torch.randn(files["d_model"], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = {}
    for name, trained_on in (("same", base_sha), ("other", other)):
        Probe(direction, {"heldout_accuracy": 0.97, "model_sha256": trained_on}).save(tmp_path / f"{name}.safetensors")
        cli = {"model": files["model"], "base": files["base"], "probe": str(tmp_path / f"{name}.safetensors"),
               "prompts": files["prompts"], "max_new_tokens": 3, "report": str(tmp_path / name / "claims.html"),
               "bootstrap": 0, "cache_dir": str(tmp_path / "cache")}
        suite = ClaimSuite(resolve_run(build_config(cli)), {"C24": spec})
        suite.compute()
        results[name] = suite.results["C24"]
    assert results["same"].status == "pass", results["same"].message()
    r = results["other"]
    assert r.status == "fail"
    assert f"the probe was trained on another model (sha256 {other[:12]}" in r.reason
    assert f"this run's base (sha256 {base_sha[:12]})" in r.reason
    assert "probe trained on this run's base (1 yes, 0 another model) = 0" in r.message()
