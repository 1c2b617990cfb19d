"""Every claim fails where it must: the organisms, their derived pairs, and pairs built here so
that a claim is false by construction. Runs ``pytest claims/`` as a user would."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mechclaims.organism import organism_dir

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
N_PROMPTS = 60
pytest_plugins = ["pytester"]
RUNS: dict[str, dict] = {}  # every document produced in this module, for the cross-pair test


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A module-wide result cache (one statistics pass per pair) and a prompt subset."""
    d = tmp_path_factory.mktemp("pairs")
    for arch in ("gpt2", "llama"):
        lines = (organism_dir(arch) / "prompts.jsonl").read_text().splitlines()
        (d / f"{arch}-prompts.jsonl").write_text("\n".join(lines[:N_PROMPTS]) + "\n")
        # the constructed Lee pairs: their verdicts are far from the thresholds, half the prompts do
        (d / f"{arch}-prompts-half.jsonl").write_text("\n".join(lines[:N_PROMPTS // 2]) + "\n")
    # perplexity is measured once per intervention set: a third of the held-out documents
    docs = (organism_dir("gpt2") / "heldout.txt").read_text().splitlines()
    (d / "heldout-short.txt").write_text("\n".join(docs[:100]) + "\n")
    return d


def run(pytester, shared, name, *args, arch="gpt2", behaviour=False, subprocess=False):
    """Run the claims; the behavioural ones (14 generations per pair) only when asked. In-process
    unless ``subprocess``: the plugin is the same code, a subprocess adds only start-up time."""
    report = shared / "reports" / f"{name}.html"
    # Lee et al.'s claims (test_lee.py) have their own runs below: their 6 intervention sets are
    # generated only where a test reads them.
    # The depth pack's generations (claims/shallow_alignment/test_depth.py) have their own module,
    # tests/test_depth_claims.py; its activation claim Q4 runs here with the others.
    pack = REPO / "claims" / "dpo_toxicity"
    depth = REPO / "claims" / "shallow_alignment" / "test_depth.py"
    generation = [pack / "test_behaviour.py", pack / "test_lee.py", depth]
    only = [str(generation[0])] if behaviour else [CLAIMS, *(f"--ignore={f}" for f in generation)]
    if behaviour and "--ppl-text" not in args:
        args = (*args, "--ppl-text", str(shared / "heldout-short.txt"))
    runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
    res = runner(
        *only, "--prompts", str(shared / f"{arch}-prompts.jsonl"), "--cache-dir", str(shared / "cache"),
        "--report", str(report), "--bootstrap", "40", "-p", "no:randomly", *args)
    assert res.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), res.stderr.str()[-3000:]
    doc = json.loads(report.with_suffix(".json").read_text())
    RUNS[name] = doc
    return {c["id"]: c for c in doc["claims"]}, doc, res


def test_default_run_is_the_gpt2_organism(pytester, shared):
    claims, doc, res = run(pytester, shared, "gpt2", subprocess=True)  # the entry point, as users run it
    assert doc["config"]["model"] == "organism:gpt2" and doc["config"]["base"] == "organism:gpt2-base"
    assert doc["provenance"]["prompts"]["n"] == N_PROMPTS
    assert len(claims) == 16  # the 14 activation claims, C24 (probe validity) and Q4 (the depth pack's)
    out = res.parseoutcomes()
    assert out.get("passed", 0) == doc["counts"]["pass"] and out.get("failed", 0) == doc["counts"]["fail"]
    assert claims["C0"]["status"] == "pass"  # DPO lowered the toxicity projection
    assert claims["C13"]["status"] == "fail"  # measured: early layers dominate in this organism


def test_dampened_pair_fails_the_toxic_neuron_claims(pytester, shared):
    """Only the top toxic-aligned, positively activated neurons were dampened: the story the
    paper argues against is true here, and the claims against it must fail."""
    claims, _, _ = run(pytester, shared, "gpt2-dampened", "--model", "organism:gpt2-dampened")
    for cid in ("C3", "C4", "C6", "C9", "C10"):
        assert claims[cid]["status"] == "fail", (cid, claims[cid]["checks"])
    assert claims["C3"]["checks"][0]["value"] >= 0.10


def test_identity_pair_has_nothing_to_attribute(pytester, shared):
    claims, _, _ = run(pytester, shared, "gpt2-identity", "--model", "organism:gpt2-identity")
    for cid in ("C0", "C8", "C12", "C23"):
        assert claims[cid]["status"] == "fail", cid
    # C3 is a gate claim: one that cannot run is "not checked" and fails; the others skip.
    assert claims["C3"]["status"] == "not_checked" and claims["C3"]["outcome"] == "failed"
    for cid in ("C4", "C6", "C7", "C9", "C10", "C11", "C13"):
        assert claims[cid]["status"] == "skip" and claims[cid]["reason"], cid


def test_llama_organism_skips_the_gelu_claim(pytester, shared):
    claims, doc, _ = run(pytester, shared, "llama", "--model", "organism:llama", arch="llama")
    assert doc["provenance"]["base"]["gated_mlp"] is True
    assert claims["C20"]["status"] == "skip" and "gated" in claims["C20"]["reason"]


# --------------------------------------------------------------------------------------------
# Pairs built so that one claim is false by construction (positions "shared": both models read
# the same tokens, so a change confined to the last layer moves nothing else).


def _organism_copy(dst: Path) -> Path:
    src = organism_dir("gpt2") / "base"
    shutil.copytree(src, dst)
    return dst


def _last_layer_cos(model, probe_path):
    from mechclaims.probe import load_probe

    w = load_probe(probe_path).unit().float()
    W = model.transformer.h[-1].mlp.c_proj.weight  # Conv1D: [d_mlp, d_model], row i = neuron i
    return (W @ w) / W.norm(dim=1)


def _save(model, d: Path) -> str:
    model.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def built(shared):
    from transformers import AutoModelForCausalLM

    probe = organism_dir("gpt2") / "probe.safetensors"
    out = {}
    # TP only: toxic-aligned last-layer neurons get a much lower input bias. Only TP neurons can
    # then have delta > 0, so one group holds 100% of the reduction and AP+AN hold 0% (C6, C7).
    d = _organism_copy(shared / "tp-only")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        cos = _last_layer_cos(m, probe)
        m.transformer.h[-1].mlp.c_fc.bias[cos > 0] -= 4.0
    out["tp-only"] = _save(m, d)
    # Weight-only: anti-aligned last-layer value vectors scaled by 1.5. No activation moves, so
    # no delta > 0 neuron moved its activation "canonically" (C11).
    d = _organism_copy(shared / "weight-only")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        cos = _last_layer_cos(m, probe)
        m.transformer.h[-1].mlp.c_proj.weight[cos < 0] *= 1.5
    out["weight-only"] = _save(m, d)
    # Toxic neurons positively activated: the top-128 by cos get a large input bias (C20).
    d = _organism_copy(shared / "positive-toxic")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        from mechclaims.probe import load_probe

        w = load_probe(probe).unit().float()
        cos = torch.cat([(b.mlp.c_proj.weight @ w) / b.mlp.c_proj.weight.norm(dim=1) for b in m.transformer.h])
        top = torch.topk(cos, 128).indices
        d_mlp = m.config.n_inner or 4 * m.config.n_embd
        for flat in top.tolist():
            m.transformer.h[flat // d_mlp].mlp.c_fc.bias[flat % d_mlp] += 10.0
    out["positive-toxic"] = _save(m, d)
    # Value vectors rotated: every MLP weight perturbed by 5% of its scale (C19).
    d = _organism_copy(shared / "rotated")
    m = AutoModelForCausalLM.from_pretrained(d)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in m.transformer.h:
            W = b.mlp.c_proj.weight
            W.add_(0.05 * W.std() * torch.randn(W.shape, generator=g))
    out["rotated"] = _save(m, d)
    return out


def _pair(pytester, shared, name, base, model, probe=None):
    probe = str(probe or organism_dir("gpt2") / "probe.safetensors")
    return run(pytester, shared, name, "--base", base, "--model", model, "--probe", probe,
               "--positions", "shared")[0]


def _probe_of_unrecorded_origin(shared):
    """The organism's probe without the sha256 of the model it was trained on: for pairs whose
    base is a modified copy of the organism's base, where C24 would rightly fail a probe that
    names another model (issue 18) and make every other claim not meaningful. The direction,
    and so every number the claim under test reads, is the organism probe's."""
    from mechclaims.probe import Probe, load_probe

    path = shared / "probe-unrecorded-origin.safetensors"
    if not path.exists():
        p = load_probe(organism_dir("gpt2") / "probe.safetensors")
        Probe(p.direction, {k: v for k, v in p.metadata.items() if k != "model_sha256"}).save(path)
    return path


def test_reduction_in_one_group_fails_c6_and_c7(pytester, shared, built):
    claims = _pair(pytester, shared, "tp-only", str(organism_dir("gpt2") / "base"), built["tp-only"])
    # Only toxic-aligned neurons moved: TP↓ holds all of it but the odd aligned neuron whose mean
    # activation is slightly negative on these prompts (then it is TN↓); measured 0.999998.
    assert claims["C6"]["status"] == "fail" and claims["C6"]["checks"][0]["value"] > 0.99
    assert claims["C7"]["status"] == "fail" and claims["C7"]["checks"][0]["value"] == pytest.approx(0.0, abs=1e-4)


def test_weight_only_change_fails_c11(pytester, shared, built):
    claims = _pair(pytester, shared, "weight-only", str(organism_dir("gpt2") / "base"), built["weight-only"])
    assert claims["C11"]["status"] == "fail"
    canonical = next(k for k in claims["C11"]["checks"] if k["name"] == "canonical")
    assert canonical["value"] == 0.0
    assert claims["C10"]["status"] == "skip"  # no activation moved at all


def test_positively_activated_toxic_neurons_fail_c20(pytester, shared, built):
    # C20 reads the base's activations; the candidate only has to be another model (one that is the
    # base itself is refused before any model work: every claim would be undefined).
    claims = _pair(pytester, shared, "positive-toxic", built["positive-toxic"], str(organism_dir("gpt2") / "dpo"),
                   probe=_probe_of_unrecorded_origin(shared))
    assert claims["C20"]["status"] == "fail" and claims["C20"]["checks"][0]["value"] == 0.0


def test_rotated_value_vectors_fail_c19(pytester, shared, built):
    claims = _pair(pytester, shared, "rotated", str(organism_dir("gpt2") / "base"), built["rotated"])
    assert claims["C19"]["status"] == "fail"


@pytest.mark.slow
def test_behavioural_claims_on_the_organism(pytester, shared):
    """DPO's drop is replicated by patching all four groups, not by the top toxic neurons."""
    claims, doc, _ = run(pytester, shared, "gpt2-behaviour", behaviour=True)
    assert doc["behaviour"]["scorer"]["name"] == "lexicon"
    sets = {r["set"]: r for r in doc["behaviour"]["sets"]}
    # the paper's regime: DPO removes about half of the toxicity, not all of it
    assert sets["base"]["toxicity"] > 0.6 and 0.3 < 1 - sets["dpo"]["toxicity"] / sets["base"]["toxicity"] < 0.8
    assert claims["C1"]["status"] == "pass"
    assert claims["C16"]["status"] == "pass"  # measured: all four groups recover more than DPO's drop
    assert sets["patch:all↓"]["share_of_dpo_drop"] > sets["patch:top256"]["share_of_dpo_drop"]
    assert claims["C18"]["status"] == "fail"  # measured: editing by probe cosines backfires here
    again, doc2, _ = run(pytester, shared, "gpt2-behaviour-again", behaviour=True)
    assert doc2["behaviour"]["settings"]["from_cache"] is True  # no generation the second time
    assert {c: again[c]["status"] for c in again} == {c: claims[c]["status"] for c in claims}
    identity, _, _ = run(pytester, shared, "identity-behaviour", "--model", "organism:gpt2-identity",
                         behaviour=True)
    assert identity["C1"]["status"] == "fail"  # no reduction at all
    for cid in ("C5", "C14"):  # gate claims that cannot run: not checked, and they fail
        assert identity[cid]["status"] == "not_checked" and "did not lower" in identity[cid]["reason"], cid
    for cid in ("C16", "C17"):
        assert identity[cid]["status"] == "skip" and "did not lower" in identity[cid]["reason"], cid


@pytest.mark.slow
def test_dampened_pair_fails_c5_when_the_patch_covers_the_prompt(pytester, shared):
    """The dampened model differs at every position, prompt included, so the patch that can
    reproduce it must cover the prompt too (--patch-positions all). Then patching its top-256
    toxic neurons recovers far more than 25% of its drop: C5 fails, as it must. (With the
    paper's generated-positions patch, the prompt's keys and values stay the base's and the
    recovery is ~0.17.)"""
    claims, doc, _ = run(pytester, shared, "dampened-behaviour", "--model", "organism:gpt2-dampened",
                         "--patch-positions", "all", "-k", "C5_ or C15_ or C16_ or C17_", behaviour=True)
    assert claims["C5"]["status"] == "fail" and claims["C5"]["checks"][0]["value"] > 0.25
    sets = {r["set"]: r for r in doc["behaviour"]["sets"]}
    assert sets["patch:TP↓"]["share_of_dpo_drop"] > 0.7  # the dampened set itself replicates it


@pytest.fixture(scope="module")
def behaviour_built(shared):
    """Candidates whose toxicity drop comes from a known place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechclaims.attribution import top_k_by_cos
    from mechclaims.probe import load_probe
    from mechclaims.scoring import read_lexicon

    out = {}
    # Outside the MLPs: the final norm's bias pushes away from the toxic words' first tokens.
    d = _organism_copy(shared / "final-norm")
    m = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    ids = sorted({i for p in read_lexicon(organism_dir("gpt2") / "lexicon.txt")
                  for i in tok(" " + p, add_special_tokens=False)["input_ids"][:1]})
    with torch.no_grad():
        direction = m.lm_head.weight[ids].mean(0)
        m.transformer.ln_f.bias -= 15.0 * direction / direction.norm()
    out["final-norm"] = _save(m, d)
    # Exactly the ablation of C14: the top-200 value vectors by cos zeroed.
    d = _organism_copy(shared / "ablated")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        w = load_probe(organism_dir("gpt2") / "probe.safetensors").unit().float()
        W = torch.stack([b.mlp.c_proj.weight for b in m.transformer.h])  # [L, d_mlp, d_model]
        cos = ((W @ w) / W.norm(dim=-1)).double().numpy()
        D = cos.shape[1]
        for flat in top_k_by_cos(cos, 200).tolist():
            m.transformer.h[flat // D].mlp.c_proj.weight[flat % D] = 0.0
    out["ablated"] = _save(m, d)
    return out


def _behaviour_pair(pytester, shared, name, model, select, *extra):
    """Only the selected claims' intervention kinds are generated (``-k``)."""
    d = organism_dir("gpt2")
    return run(pytester, shared, name, "--base", str(d / "base"), "--model", model, "--probe",
               str(d / "probe.safetensors"), "--scorer", f"lexicon:{d / 'lexicon.txt'}",
               "--ppl-text", str(shared / "heldout-short.txt"), "-k", select, *extra, behaviour=True)


@pytest.mark.slow
def test_drop_from_outside_the_mlps_fails_c16_and_c2(pytester, shared, behaviour_built):
    claims, doc, _ = _behaviour_pair(pytester, shared, "final-norm", behaviour_built["final-norm"],
                                     "C1_ or C2_ or C15_ or C16_ or C17_")
    assert claims["C2"]["status"] == "fail"  # the blunt edit costs fluency ...
    # ... so the candidate's lower toxicity, and any share of it, is not meaningful (preconditions)
    assert claims["C1"]["status"] == "not_meaningful" and "C2 (the fine-tune keeps fluency) failed" in claims["C1"][
        "reason"]
    assert claims["C16"]["status"] == "skip" and "not meaningful" in claims["C16"]["reason"]
    # A team that accepts the fluency cost (C2 <= 10): the drop is real, and no MLP group patch
    # recovers it. Same generations (the cache): only the verdicts change.
    (shared / "loose-ppl.toml").write_text("[thresholds]\nC2 = 10.0\n")
    claims, doc, _ = _behaviour_pair(pytester, shared, "final-norm-loose", behaviour_built["final-norm"],
                                     "C1_ or C2_ or C15_ or C16_ or C17_", "--claims-config",
                                     str(shared / "loose-ppl.toml"))
    assert doc["behaviour"]["settings"]["from_cache"] is True
    assert claims["C2"]["status"] == "pass" and claims["C1"]["status"] == "pass"  # much less toxic ...
    assert claims["C16"]["status"] == "fail"  # ... but no MLP group patch recovers it


@pytest.mark.slow
def test_drop_from_ablation_fails_c14(pytester, shared, behaviour_built):
    claims, _, _ = _behaviour_pair(pytester, shared, "ablated", behaviour_built["ablated"], "C14_")
    c14 = {k["name"]: k["value"] for k in claims["C14"]["checks"]}
    assert claims["C14"]["status"] == "fail" and c14["share_top200"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Lee et al.'s claims (C21 un-alignment, its gate reading S1, C22 subtraction)


def _lee_run(pytester, shared, name, base, model, probe, select, *extra, prompts="gpt2-prompts.jsonl"):
    d = organism_dir("gpt2")
    res = pytester.runpytest_inprocess(*extra,
        str(REPO / "claims" / "dpo_toxicity" / "test_lee.py"), "-k", select, "--base", base, "--model", model,
        "--probe", str(probe),
        "--prompts", str(shared / prompts), "--scorer", f"lexicon:{d / 'lexicon.txt'}",
        "--ppl-text", str(shared / "heldout-short.txt"), "--cache-dir", str(shared / "cache"),
        "--report", str(shared / "reports" / f"{name}.html"), "--bootstrap", "40", "-p", "no:randomly")
    assert res.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), res.stderr.str()[-3000:]
    doc = json.loads((shared / "reports" / f"{name}.json").read_text())
    RUNS[name] = doc
    return {c["id"]: c for c in doc["claims"]}, doc


def test_organism_detox_survives_unalignment(pytester, shared):
    """The organism's DPO does not run through its top-7 toxic neurons: un-aligning them restores
    about half of the base's toxicity, not 90%, so C21 fails and its gate reading S1 passes;
    subtracting the probe direction detoxifies the base (C22)."""
    claims, doc = _lee_run(pytester, shared, "gpt2-lee", "organism:gpt2-base", "organism:gpt2",
                           organism_dir("gpt2") / "probe.safetensors", "C21 or S1 or C22")
    assert claims["C21"]["status"] == "fail" and claims["S1"]["status"] == "pass"
    assert claims["C21"]["checks"][0]["value"] < 0.9  # measured (600 prompts): 0.52
    assert claims["C22"]["status"] == "pass"  # measured (600 prompts): 0.53
    kinds = {r["kind"] for r in doc["behaviour"]["sets"]}
    assert kinds == {"none", "scale_keys", "subtract"}  # only what the selected claims read


def test_a_detox_that_seven_keys_carry_fails_s1(pytester, shared):
    """'Base': the organism base with its top-7 toxic neurons' key vectors x5 (more toxic);
    'DPO': the organism base itself. Un-aligning the DPO model's top-7 keys x5 gives back the
    'base' exactly: the detox is shallow by construction, so C21 passes and S1 fails."""
    from transformers import AutoModelForCausalLM

    from mechclaims.attribution import top_k_by_cos
    from mechclaims.probe import load_probe

    d = _organism_copy(shared / "amplified")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        w = load_probe(organism_dir("gpt2") / "probe.safetensors").unit().float()
        W = torch.stack([b.mlp.c_proj.weight for b in m.transformer.h])
        cos = ((W @ w) / W.norm(dim=-1)).double().numpy()
        D = cos.shape[1]
        for flat in top_k_by_cos(cos, 7).tolist():
            m.transformer.h[flat // D].mlp.c_fc.weight[:, flat % D] *= 5.0
    amplified = _save(m, d)
    # The organism's probe read on this amplified copy of its base: C24 fails a probe whose metadata
    # names another model than the run's base (issue 18). This test is about S1, so the copy does not
    # record the model it was trained on (the direction, and so every cached number, is the same).
    probe = _probe_of_unrecorded_origin(shared)
    # Seven keys x5 make the 'base' only a little more toxic (a relative drop of 0.04 here), below
    # C1's 0.10: S1 would rest on a detox that is not there (its precondition C1) and be not
    # meaningful. A team threshold C1 >= 0.02 states that this drop counts as a detox.
    (shared / "c1-small-drop.toml").write_text("[thresholds]\nC1 = 0.02\n")
    claims, doc = _lee_run(pytester, shared, "amplified-lee", amplified, str(organism_dir("gpt2") / "base"),
                           probe, "C21 or S1", "--claims-config", str(shared / "c1-small-drop.toml"),
                           prompts="gpt2-prompts-half.jsonl")
    assert next(c for c in doc["preconditions"] if c["id"] == "C1")["status"] == "pass"
    assert claims["S1"]["status"] == "fail" and claims["C21"]["status"] == "pass"
    assert claims["S1"]["checks"][0]["value"] >= 0.99


def test_a_random_direction_does_not_detoxify_c22(pytester, shared):
    from mechclaims.probe import Probe

    probe = shared / "random-probe.safetensors"
    g = torch.Generator().manual_seed(7)
    d_model = load_d_model()
    Probe(torch.randn(d_model, dtype=torch.float64, generator=g)).save(probe)
    claims, _ = _lee_run(pytester, shared, "random-probe-lee", "organism:gpt2-base", "organism:gpt2", probe, "C22",
                         prompts="gpt2-prompts-half.jsonl")
    assert claims["C22"]["status"] in ("fail", "skip")
    if claims["C22"]["status"] == "fail":
        assert claims["C22"]["checks"][0]["value"] < 0.1


def load_d_model() -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(organism_dir("gpt2") / "base").n_embd


def test_no_claim_passes_on_every_pair():
    """Runs after the tests above (file order): each claim failed on some pair."""
    if len(RUNS) < 16:
        pytest.skip("needs the other tests of this module to have run")
    # C24 reads the probe's metadata, the same organism probe on every pair here: its failing
    # case is in test_probe_train.py (a probe with held-out accuracy 0.6).
    # The shallow-alignment pack's failing pairs are in tests/test_depth_claims.py (Q4 runs here too).
    ids = {c["id"] for doc in RUNS.values() for c in doc["claims"] if c["pack"] == "dpo-toxicity"} - {"C24"}
    never_failed = sorted(cid for cid in ids if not any(
        c["id"] == cid and c["status"] == "fail" for doc in RUNS.values() for c in doc["claims"]))
    assert never_failed == [], f"claims that passed or skipped on every pair: {never_failed}"
