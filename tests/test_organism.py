"""The embedded model organism: corpus, public API, the builder (micro build), the committed
artifacts (checked and their acceptance figures recomputed) and the derived pairs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mechclaims import organism  # noqa: E402
from mechclaims.builder import corpus as C  # noqa: E402
from mechclaims.errors import ModelSourceError  # noqa: E402

ARCHS = ("gpt2", "llama")
REPO_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# --------------------------------------------------------------------------------------------
# Corpus


def test_corpus_size_and_registers():
    assert len(C.word_types()) >= 400
    assert C.n_templates() >= 20
    assert len(C.TOXIC_LEXICON) >= 40
    assert set(C.PROVOCATIONS) == {"severe", "medium", "mild"}
    mean_p = sum(C.P_TOXIC.values()) / len(C.P_TOXIC)
    assert 0.45 <= mean_p <= 0.6


def test_corpus_is_deterministic_and_context_dependent():
    a, b = C.Generator(7), C.Generator(7)
    assert [a.document() for _ in range(20)] == [b.document() for _ in range(20)]
    g = C.Generator(3)
    # neutral registers never contain a lexicon phrase
    assert not any(C.is_toxic(g.neutral_document()) for _ in range(300))
    # the toxic rate follows the context (severity x temperament), not a fixed token
    rates = {}
    for cell in (("severe", "hot"), ("mild", "calm")):
        n = 400
        tox = 0
        for _ in range(n):
            pv = g.provocation(*cell)
            assert C.is_toxic(pv.toxic) and not C.is_toxic(pv.neutral)
            assert not C.is_toxic(pv.prompt) and pv.prompt.endswith('"')
            tox += g.rng.random() < pv.p_toxic
        rates[cell] = tox / n
    assert rates[("severe", "hot")] > 0.85 > 0.15 > rates[("mild", "calm")]
    # answers start with several different words in both registers
    firsts_t = {re.match(r"\w+", g.provocation().toxic).group(0) for _ in range(300)}
    firsts_n = {re.match(r"\w+", g.provocation().neutral).group(0) for _ in range(300)}
    assert len(firsts_t) >= 5 and len(firsts_n) >= 5


# --------------------------------------------------------------------------------------------
# Public API


def test_names_and_base_of():
    names = organism.organism_names()
    for arch in ARCHS:
        for suffix in ("", "-base", "-dampened", "-identity", "-noise"):
            assert f"{arch}{suffix}" in names
    assert organism.base_of("gpt2") == "gpt2-base"
    assert organism.base_of("gpt2-dampened") == "gpt2-base"
    assert organism.base_of("gpt2-base") == "gpt2-base"
    assert organism.base_of("llama-noise") == "llama-base"
    assert "gpt2-lora" in names and organism.base_of("gpt2-lora") == "gpt2-base"
    assert "llama-lora" not in names


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelSourceError) as e:
        organism.open_organism("gpt3")
    assert "gpt2-dampened" in str(e.value) and "llama-base" in str(e.value)
    with pytest.raises(ModelSourceError):
        organism.base_of("gpt2-bogus")


def test_organism_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MECHCLAIMS_FIXTURES", raising=False)
    assert organism.organism_dir("gpt2") == REPO_FIXTURES / "organism" / "gpt2"
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(tmp_path))
    assert organism.organism_dir("llama") == tmp_path / "organism" / "llama"
    with pytest.raises(ModelSourceError, match="missing"):
        organism.open_organism("llama-base")


# --------------------------------------------------------------------------------------------
# Micro build: the whole builder runs, so it cannot rot


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_micro_build(arch, tmp_path, monkeypatch):
    from mechclaims.builder.build import build, check
    from mechclaims.builder.config import BuildConfig

    out = tmp_path / "organism" / arch
    m = build(out, BuildConfig.micro(arch), log=lambda s: None)
    for rel in ("base/model.safetensors", "base/tokenizer.json", "dpo/model.safetensors",
                "probe.safetensors", "prompts.jsonl", "heldout.txt", "lexicon.txt",
                "derived.json", "probe_eval.jsonl"):
        assert (out / rel).is_file(), rel
        assert rel in m["files"]
    assert check(out) == []
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["arch"] == arch and on_disk["files"] == m["files"]
    for key in ("base_toxicity", "dpo_toxicity", "relative_reduction", "ppl_base", "ppl_dpo",
                "ppl_ratio", "probe_heldout_accuracy", "probe_eval_accuracy"):
        assert key in on_disk["acceptance"]
    assert {"seeds", "sizes", "versions", "build_seconds", "thresholds", "derived"} <= set(on_disk)
    # the tokenizer has distinct special tokens and adds none by itself
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(out / "base")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok.bos_token_id not in tok("Sam said hello")["input_ids"]
    # every name opens from the built directory
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(tmp_path))
    for name in (arch, f"{arch}-base", f"{arch}-dampened", f"{arch}-identity", f"{arch}-noise",
                 *[f"{arch}-{a}" for a in organism.ADAPTERS.get(arch, ())]):
        model, tok2, info = organism.open_organism(name)
        assert info["name"] == name and info["base"] == f"{arch}-base"
        assert not model.training and Path(info["probe"]).is_file()
    # a changed file is reported
    (out / "heldout.txt").write_text("tampered\n")
    assert any("heldout.txt" in p for p in check(out))


# --------------------------------------------------------------------------------------------
# The committed organisms


def _committed(arch):
    d = REPO_FIXTURES / "organism" / arch
    if not (d / "manifest.json").is_file():
        pytest.fail(f"{d} holds no organism; build it with "
                    f"`python -m mechclaims.builder build --arch {arch} --out {d}`.")
    return d, json.loads((d / "manifest.json").read_text())


@pytest.fixture(scope="module", params=ARCHS)
def committed(request):
    return request.param, *_committed(request.param)


def test_committed_files_match_manifest(committed):
    from mechclaims.builder.build import check

    arch, d, m = committed
    assert check(d) == []
    weights = sum((d / r).stat().st_size for r in m["files"] if r.endswith(".safetensors"))
    assert weights == m["weights_bytes"]


def test_committed_organisms_under_40_mb():
    total = sum(f.stat().st_size for f in (REPO_FIXTURES / "organism").rglob("*") if f.is_file())
    assert total <= 40 * 2**20, total


def test_committed_organisms_are_the_papers_regime(committed):
    """Issue #11's bar: enough neurons that top-128 is a small slice, a DPO learning rate at
    most 1/100 of pretraining, a partial reduction (40-70%) that the curve shows, fp32."""
    from mechclaims.builder.config import THRESHOLDS

    arch, d, m = committed
    assert m["sizes"]["n_neurons"] >= THRESHOLDS["min_neurons"][arch]
    if arch == "gpt2":  # the bar for GPT-2 (GPT-2 medium: 0.13%); Llama: >= 4,096 neurons
        assert 128 / m["sizes"]["n_neurons"] <= 0.016
    assert m["dpo"]["lr"] <= m["config"]["lr"] / 100 and m["dpo"]["beta"] == 0.1
    assert m["dpo"]["precision"] == "fp32"
    curve = m["dpo"]["curve"]
    tox = [r for r in curve if r.get("toxicity") is not None]
    assert tox[0]["step"] == 0 and tox[-1]["step"] == m["dpo"]["steps"] and len(tox) >= 5
    assert tox[-1]["reduction"] == pytest.approx(m["acceptance"]["relative_reduction"], abs=1e-9)
    assert all(r.get("reward_margin") is not None for r in curve if r["step"] > 0)
    assert all(m["passed"].values()), m["passed"]
    if arch == "gpt2":
        assert m["lora"]["adapter_bytes"] < 2 * 2**20
        assert (d / "lora" / "adapter_config.json").is_file()
        assert not (d / "lora" / "model.safetensors").exists()


def test_committed_acceptance_recomputed(committed, monkeypatch):
    """Recompute every acceptance figure from the committed files, through the engine, as the
    claims read them; agree with the manifest."""
    import numpy as np

    from mechclaims.loading import load_model
    from mechclaims.builder.config import THRESHOLDS, BuildConfig
    from mechclaims.builder.measure import toxicity
    from mechclaims.perplexity import perplexity
    from mechclaims.probe import load_probe, pooled_features
    from mechclaims.prompts import read_prompts
    from mechclaims.scoring import LexiconScorer

    arch, d, m = committed
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    acc = m["acceptance"]
    cfg = BuildConfig.default(arch)
    info = organism.organism_info(f"{arch}-base")
    prompts = read_prompts(info["prompts"])
    assert len(prompts) >= 500
    scorer = LexiconScorer(info["lexicon"])
    names = {"base": f"{arch}-base", "dpo": arch, **({"lora": "gpt2-lora"} if arch == "gpt2" else {})}
    lms = {k: load_model(f"organism:{n}", memo=False) for k, n in names.items()}
    tox = {k: toxicity(lm, lm.tokenizer, prompts, scorer, cfg)["toxicity"] for k, lm in lms.items()}
    ppl = {k: perplexity(lm, Path(info["heldout"]))["ppl"] for k, lm in lms.items()}
    assert tox["base"] == pytest.approx(acc["base_toxicity"], abs=0.02)
    assert tox["dpo"] == pytest.approx(acc["dpo_toxicity"], abs=0.02)
    assert ppl["base"] == pytest.approx(acc["ppl_base"], rel=5e-3)
    assert ppl["dpo"] == pytest.approx(acc["ppl_dpo"], rel=5e-3)
    assert tox["base"] >= THRESHOLDS["base_toxicity_min"]
    assert THRESHOLDS["relative_reduction_min"] <= 1 - tox["dpo"] / tox["base"] <= THRESHOLDS["relative_reduction_max"]
    assert ppl["dpo"] / ppl["base"] <= THRESHOLDS["ppl_ratio_max"]
    if "lora" in lms:  # the adapter, merged by the engine's adapter path
        assert tox["lora"] == pytest.approx(m["lora"]["toxicity"], abs=0.02)
        assert ppl["lora"] == pytest.approx(m["lora"]["ppl"], rel=5e-3)
    # probe: accuracy on the shipped labelled set with the stored threshold
    probe = load_probe(info["probe"], d_model=lms["base"].d_model)
    rows = [json.loads(line) for line in (d / "probe_eval.jsonl").read_text().splitlines() if line]
    proj = pooled_features(lms["base"], [r["text"] for r in rows]) @ probe.direction.numpy()
    ev = float(((proj > acc["probe_threshold"]).astype(int)
                == np.array([r["label"] for r in rows])).mean())
    assert ev == pytest.approx(acc["probe_eval_accuracy"], abs=0.01)
    assert ev >= THRESHOLDS["probe_accuracy_min"]
    assert acc["probe_heldout_accuracy"] >= THRESHOLDS["probe_accuracy_min"]


# --------------------------------------------------------------------------------------------
# Derived pairs


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_identity_equals_base(committed, monkeypatch):
    import torch

    arch, d, m = committed
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    b = _params(organism.open_organism(f"{arch}-base")[0])
    i_model, _, info = organism.open_organism(f"{arch}-identity")
    i = _params(i_model)
    assert b.keys() == i.keys() and all(torch.equal(b[k], i[k]) for k in b)
    assert info["sha256"] != organism.open_organism(f"{arch}-base")[2]["sha256"]


def test_noise_is_small_and_mlp_only(committed, monkeypatch):
    import torch

    arch, d, m = committed
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    b = _params(organism.open_organism(f"{arch}-base")[0])
    n = _params(organism.open_organism(f"{arch}-noise")[0])
    n2 = _params(organism.open_organism(f"{arch}-noise")[0])
    assert all(torch.equal(n[k], n2[k]) for k in n)  # seeded
    changed = 0
    for k in b:
        if ".mlp." in k:
            rel = float((n[k] - b[k]).norm() / b[k].norm())
            assert 1e-5 < rel < 1e-2, (k, rel)
            changed += 1
        else:
            assert torch.equal(n[k], b[k]), k
    assert changed > 0


def test_dampened_changes_only_the_chosen_neurons(committed, monkeypatch):
    import torch

    arch, d, m = committed
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    recipe = json.loads((d / "derived.json").read_text())["dampened"]
    chosen = {(l, i) for l, i in recipe["neurons"]}
    assert chosen
    b = _params(organism.open_organism(f"{arch}-base")[0])
    dm = _params(organism.open_organism(f"{arch}-dampened")[0])
    found = set()
    for k in b:
        if torch.equal(b[k], dm[k]):
            continue
        mm = re.match(r".*\.(\d+)\.mlp\.(c_fc\.bias|up_proj\.weight)$", k)
        assert mm, f"unexpected change in {k}"
        layer = int(mm.group(1))
        diff = (b[k] != dm[k])
        rows = diff.nonzero()[:, 0].unique().tolist()
        found |= {(layer, r) for r in rows}
    assert found == chosen


def test_dampened_reduces_toxicity(committed, monkeypatch):
    """The control for C3: toxicity falls >= 0.30 through the toxic-aligned neurons alone, on
    both architectures, without an xfail."""
    from mechclaims.loading import load_model
    from mechclaims.builder.config import THRESHOLDS, BuildConfig
    from mechclaims.builder.measure import toxicity
    from mechclaims.prompts import read_prompts
    from mechclaims.scoring import LexiconScorer

    arch, d, m = committed
    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    lm = load_model(f"organism:{arch}-dampened", memo=False)
    info = lm.info
    prompts = read_prompts(info["prompts"])
    t = toxicity(lm, lm.tokenizer, prompts, LexiconScorer(info["lexicon"]), BuildConfig.default(arch))["toxicity"]
    assert t == pytest.approx(m["derived"]["dampened"]["toxicity"], abs=0.02)
    assert 1 - t / m["acceptance"]["base_toxicity"] >= THRESHOLDS["dampened_drop_min"]


def test_engine_loader_opens_organisms(monkeypatch):
    from mechclaims.loading import load_model

    monkeypatch.setenv("MECHCLAIMS_FIXTURES", str(REPO_FIXTURES))
    lm = load_model("organism:gpt2")
    assert lm.info["name"] == "gpt2" and lm.info["base"] == "gpt2-base"
    assert lm.sha256 == lm.info["sha256"]
    lora = load_model("organism:gpt2-lora")
    assert lora.info["adapter"].endswith("lora") and lora.info["merged"] == "peft merge_and_unload"
    assert lora.sha256 not in (lm.sha256, load_model("organism:gpt2-base").sha256)
