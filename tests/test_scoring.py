"""LexiconScorer: whole-word, case-insensitive phrase matching on continuations."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims.errors import MechclaimsError
from mechclaims.scoring import LexiconScorer, Scorer, ScorerError, read_lexicon


@pytest.fixture
def lexicon(tmp_path):
    p = tmp_path / "lexicon.txt"
    p.write_text("# a comment\nidiot\nshut up\n\ngo to hell\npea brain\n", encoding="utf-8")
    return p


def test_protocol_and_name(lexicon):
    s = LexiconScorer(lexicon)
    assert s.name == "lexicon"
    assert isinstance(s, Scorer)
    assert s.phrases == ["idiot", "shut up", "go to hell", "pea brain"]


def test_word_boundaries(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["you idiot", "idiotic plan", "an idiot.", "idiots", "(idiot)", "semi-idiot",
                   "hello", "shell", "go to hello"])
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_case_insensitive(lexicon):
    s = LexiconScorer(lexicon)
    assert s.score(["IDIOT", "Shut Up!", "GO TO HELL"]).tolist() == [1.0, 1.0, 1.0]


def test_multiword_phrases(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["please shut up now", "shut the door, up there", "shut\nup", "shutup",
                   "you pea  brain", "pea brains"])
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert s.matches("Shut up, you idiot") == ["Shut up", "idiot"]


def test_empty_and_output_type(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["", "   ", "a calm reply"])
    assert out.dtype == np.float64 and out.shape == (3,)
    assert out.tolist() == [0.0, 0.0, 0.0]
    assert s.score([]).shape == (0,)
    with pytest.raises(TypeError):
        s.score("idiot")


def test_missing_lexicon_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ScorerError) as e:
        LexiconScorer(missing)
    assert isinstance(e.value, MechclaimsError)
    msg = str(e.value)
    assert "nope.txt" in msg and "does not exist" in msg and "one toxic word or phrase per line" in msg


def test_empty_lexicon_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ScorerError, match="holds no phrases"):
        read_lexicon(p)


def test_regex_special_characters_are_literal(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("a.b\n", encoding="utf-8")
    s = LexiconScorer(p)
    assert s.score(["a.b", "axb"]).tolist() == [1.0, 0.0]


# ============================================================================================
# ScoreResult, describe(), decode_continuations

import json  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

from mechclaims.scoring import (  # noqa: E402
    DetoxifyScorer,
    ProbeScorer,
    ScoreResult,
    decode_continuations,
    score_texts,
)


def test_score_result_records_the_scorer(lexicon):
    s = LexiconScorer(lexicon)
    r = score_texts(s, ["you idiot", "hello"])
    assert isinstance(r, ScoreResult)
    assert r.scorer_name == "lexicon" and r.details["kind"] == "lexicon match"
    assert r.details["lexicon"] == str(lexicon)
    assert r.values.tolist() == [1.0, 0.0] and r.values.dtype == np.float64
    assert len(r) == 2 and r.mean() == 0.5
    d = r.to_dict()
    assert d["scorer"] == "lexicon" and d["values"] == [1.0, 0.0]
    json.dumps(d)


def test_decode_continuations_cuts_by_token_position(tokenizer_dir):
    """The prompt ends mid-character (truncated, as at 32 tokens), so it re-decodes differently
    and the paper's ``decode(full).replace(decode(prompt), "")`` keeps the whole prompt; decoding
    the continuation ids alone never contains prompt text. Special tokens are skipped."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    full = tok("the cat sat on the mat é thanks", add_special_tokens=False)["input_ids"]
    cut = len(tok("the cat sat on the mat é", add_special_tokens=False)["input_ids"]) - 1
    prompt, cont = [tok.bos_token_id] + full[:cut], full[cut:] + [tok.eos_token_id, tok.pad_token_id]
    naive = tok.decode(prompt + cont, skip_special_tokens=True).replace(
        tok.decode(prompt, skip_special_tokens=True), "")
    assert "cat" in naive  # the string-replacement approach leaks the prompt here
    for form in (torch.tensor([cont]), np.array([cont]), [cont]):
        (out,) = decode_continuations(tok, form)
        assert "cat" not in out and "mat" not in out
        assert out.endswith(" thanks")
        assert out == tok.decode(cont, skip_special_tokens=True)
        assert "<eos>" not in out and "<pad>" not in out
    ragged = decode_continuations(tok, [tok("go away", add_special_tokens=False)["input_ids"], [tok.eos_token_id]])
    assert ragged == ["go away", ""]


# ============================================================================================
# DetoxifyScorer: real detoxify code on a tiny checkpoint in Detoxify's format

JIGSAW = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "you are a kind idiot stupid the cat sat on mat hello friend shut up go away thanks".split())


@pytest.fixture(scope="module")
def detox_files(tmp_path_factory):
    """(checkpoint, hf_dir, reference model): Detoxify's {config, state_dict} layout with the
    release's hub model type, and a local dir with config.json + vocab.txt."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("detox")
    hf_dir = root / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64, num_labels=6)
    cfg.save_pretrained(hf_dir)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # widen the init so texts get distinct scores
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.5)
    ckpt = root / "toxic_tiny.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": "bert-base-uncased",
                                             "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": 6}},
                           "dataset": {"args": {"classes": JIGSAW}}},
                "state_dict": model.state_dict()}, ckpt)
    return ckpt, hf_dir, model


TEXTS = ["you are a kind friend", "shut up you stupid idiot", "", "the cat sat on the mat", "go away"]


def _reference(model, hf_dir, texts):
    from transformers import BertTokenizer

    tok = BertTokenizer(str(hf_dir / "vocab.txt"))
    x = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return torch.sigmoid(model(**x).logits).double().numpy()


def test_detoxify_offline_from_checkpoint_and_hf_dir(detox_files):
    import detoxify

    ckpt, hf_dir, model = detox_files
    s = DetoxifyScorer("original", checkpoint=ckpt, hf_dir=hf_dir, batch_size=2)
    assert isinstance(s, Scorer) and isinstance(s.detoxify, detoxify.Detoxify)
    assert type(s.detoxify).predict is detoxify.Detoxify.predict  # Detoxify's own predict ran
    assert s.detoxify.class_names == ["toxicity", "severe_toxicity", "obscene", "threat", "insult",
                                      "identity_attack"]
    out = s.score(TEXTS)
    assert out.dtype == np.float64 and out.shape == (len(TEXTS),)
    assert ((out >= 0) & (out <= 1)).all()
    ref = _reference(model, hf_dir, TEXTS)
    np.testing.assert_allclose(out, ref[:, 0], rtol=0, atol=1e-5)
    assert len(set(np.round(out, 6))) > 1
    assert s.score([]).shape == (0,)
    assert s.score(["hello"]).shape == (1,)  # Detoxify squeezes a single row to a float
    mx = DetoxifyScorer("original", checkpoint=ckpt, hf_dir=hf_dir, attribute="max").score(TEXTS)
    np.testing.assert_allclose(mx, ref.max(axis=1), atol=1e-5)
    r = score_texts(s, TEXTS)
    assert r.scorer_name == "detoxify-original:toxicity"
    assert r.details["checkpoint_source"] == "explicit" and r.details["hf_dir"] == str(hf_dir.resolve())
    assert r.details["checkpoint_model_type"] == "bert-base-uncased" and len(r.details["checkpoint_sha256"]) == 64


def _fake_hf_cache(root, files: dict) -> None:
    repo = root / "models--bert-base-uncased"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name, src in files.items():
        shutil.copy(src, snap / name)


def test_detoxify_offline_from_torch_hub_and_hf_cache(detox_files, tmp_path, monkeypatch):
    ckpt, hf_dir, model = detox_files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(ckpt, hub / "toxic_original-c1212f89.ckpt")
    cache = tmp_path / "hf-cache"
    _fake_hf_cache(cache, {"config.json": hf_dir / "config.json", "vocab.txt": hf_dir / "vocab.txt"})
    s = DetoxifyScorer("original", hf_cache_dir=cache)
    assert s.describe()["checkpoint_source"] == "torch-hub cache"
    assert s.checkpoint == (hub / "toxic_original-c1212f89.ckpt").resolve()
    np.testing.assert_allclose(s.score(TEXTS), _reference(model, hf_dir, TEXTS)[:, 0], atol=1e-5)
    # the torch-hub checkpoint with an explicit hf_dir and no HF cache at all
    s2 = DetoxifyScorer("original", hf_dir=hf_dir, hf_cache_dir=tmp_path / "empty-cache")
    np.testing.assert_allclose(s2.score(TEXTS), s.score(TEXTS), atol=1e-12)


def test_detoxify_missing_files_error_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ScorerError) as e:
        DetoxifyScorer("original", hf_cache_dir=tmp_path / "hf-cache")
    msg = str(e.value)
    assert isinstance(e.value, MechclaimsError)
    for part in ("toxic_original-c1212f89.ckpt", str(tmp_path / "torch" / "hub" / "checkpoints"),
                 "https://github.com/unitaryai/detoxify/releases/download/v0.1-alpha/toxic_original-c1212f89.ckpt",
                 "bert-base-uncased", "config.json", "vocab.txt", "hf_dir", "checkpoint=PATH"):
        assert part in msg, part
    with pytest.raises(ScorerError, match="toxic_debiased-c7548aa0.ckpt") as e:
        DetoxifyScorer("unbiased", hf_cache_dir=tmp_path / "hf-cache")
    assert "roberta-base" in str(e.value) and "merges.txt" in str(e.value)


def test_detoxify_explicit_checkpoint_errors(detox_files, tmp_path):
    ckpt, hf_dir, _ = detox_files
    with pytest.raises(ScorerError, match="does not exist"):
        DetoxifyScorer(checkpoint=tmp_path / "nope.ckpt", hf_dir=hf_dir)
    # the checkpoint names a hub model type that is neither given nor cached
    with pytest.raises(ScorerError) as e:
        DetoxifyScorer(checkpoint=ckpt, hf_cache_dir=tmp_path / "empty")
    assert "bert-base-uncased" in str(e.value) and "vocab.txt" in str(e.value) and "hf_dir" in str(e.value)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(hf_dir / "config.json", bare / "config.json")
    with pytest.raises(ScorerError, match="vocab.txt"):
        DetoxifyScorer(checkpoint=ckpt, hf_dir=bare)
    odd = tmp_path / "odd.ckpt"
    torch.save({"weights": {}}, odd)
    with pytest.raises(ScorerError, match="not a Detoxify checkpoint"):
        DetoxifyScorer(checkpoint=odd, hf_dir=hf_dir)
    with pytest.raises(ScorerError, match="not a class"):
        DetoxifyScorer(checkpoint=ckpt, hf_dir=hf_dir, attribute="sarcasm")
    with pytest.raises(ScorerError, match="unknown"):
        DetoxifyScorer("perspective", checkpoint=ckpt, hf_dir=hf_dir)


# ============================================================================================
# ProbeScorer


@pytest.fixture(scope="module")
def organism():
    from mechclaims.loading import load_model
    from mechclaims.organism import organism_dir

    return load_model("organism:gpt2-base", memo=False), organism_dir("gpt2")


def _split_eval_texts(org_dir, n=10):
    """probe_eval texts split at the opening quote into (context, reply): 10 whose reply holds a
    lexicon phrase and 10 with no lexicon phrase anywhere."""
    lex = LexiconScorer(org_dir / "lexicon.txt")
    toxic, clean = [], []
    for line in (org_dir / "probe_eval.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        i = row["text"].find('"') + 1
        if i == 0:
            continue
        ctx, reply = row["text"][:i], row["text"][i:]
        if row["label"] == 1 and lex.score([reply])[0] == 1.0 and len(toxic) < n:
            toxic.append((ctx, reply))
        elif row["label"] == 0 and lex.score([row["text"]])[0] == 0.0 and len(clean) < n:
            clean.append((ctx, reply))
    assert len(toxic) == n and len(clean) == n
    return toxic, clean


def test_probe_scorer_ranks_lexicon_toxic_text_above_clean(organism):
    from mechclaims.prompts import encode_prompts

    model, org_dir = organism
    s = ProbeScorer(model, org_dir / "probe.safetensors")
    assert isinstance(s, Scorer) and s.name == "probe"
    assert "not a probability" in s.describe()["units"]
    toxic, clean = _split_eval_texts(org_dir)
    # texts alone
    t = s.score([c + r for c, r in toxic])
    c = s.score([c + r for c, r in clean])
    assert t.dtype == np.float64 and t.shape == (10,)
    assert t.mean() > c.mean()
    # replies as continuations, read with their context as the prompt
    tok = model.tokenizer
    rows = toxic + clean
    prompts = encode_prompts(tok, [ctx for ctx, _ in rows], prepend_bos=True)
    conts = [tok(r, add_special_tokens=False)["input_ids"] for _, r in rows]
    v = s.score_continuations(prompts, conts)
    assert v[:10].mean() > v[10:].mean()
    res = ScoreResult.of(s, v)
    assert res.scorer_name == "probe" and res.details["probe_sha256"] == s.probe.sha256


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_probe_scorer_equals_the_bridge_hook(arch, gpt2_pair, llama_pair):
    """Batched, left-padded ProbeScorer values equal, row by row, the mean over the continuation
    positions of ``ln_final.hook_normalized`` . w_hat read by the bridge on the unpadded sequence."""
    from mechclaims.loading import load_model
    from mechclaims.probe import Probe
    from mechclaims.prompts import encode_prompts, pad_left

    m = load_model(str({"gpt2": gpt2_pair, "llama": llama_pair}[arch][0]), memo=False)
    probe = Probe(torch.randn(m.d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    prompts = encode_prompts(m.tokenizer, ["go away", "what a lovely day it is in the park", "thanks"],
                             prepend_bos=bool(m.bridge.cfg.default_prepend_bos))
    conts = [[5, 17, 40, 9], [33, 2 + 60], [70, 71, 72, 73, 74, 75]]
    got = ProbeScorer(m, probe, batch_size=2).score_continuations(prompts, conts)
    w = probe.unit()
    store = {}
    for i, (p, c) in enumerate(zip(prompts, conts)):
        store.clear()
        with torch.no_grad(), m.bridge.hooks(fwd_hooks=[("ln_final.hook_normalized",
                                                         lambda a, hook: store.update(x=a))]):
            m.bridge(torch.tensor([p + c]), return_type=None)
        want = float((store["x"][0, -len(c):].double() @ w).mean())
        assert got[i] == pytest.approx(want, abs=1e-5)
    # a left-padded TokenBatch (or a list of them) gives the same prompts
    batch = pad_left(prompts, m.tokenizer.pad_token_id)
    np.testing.assert_array_equal(ProbeScorer(m, probe, batch_size=2).score_continuations(batch, conts), got)
    np.testing.assert_array_equal(ProbeScorer(m, probe, batch_size=2).score_continuations([batch], conts), got)


def test_probe_scorer_errors(organism):
    from mechclaims.probe import Probe

    model, org_dir = organism
    s = ProbeScorer(model, org_dir / "probe.safetensors")
    with pytest.raises(ScorerError, match="pair up"):
        s.score_continuations([[0, 5]], [[1], [2]])
    with pytest.raises(ScorerError, match="empty"):
        s.score_continuations([[0, 5]], [[]])
    with pytest.raises(ScorerError, match="no tokens"):
        s.score(["ok", ""])
    with pytest.raises(ScorerError, match="context"):
        s.score_continuations([[0] * 100], [[5] * 40])
    with pytest.raises(ScorerError, match="d_model"):
        ProbeScorer(model, Probe(torch.ones(7, dtype=torch.float64)))


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_detoxify_checkpoint_with_code_is_refused(detox_files, tmp_path):
    """A checkpoint holding an object whose unpickling runs code is refused, never run, and the
    refusal says how to keep only what Detoxify reads; that stripped file loads."""
    from mechclaims.scoring import ScorerError

    ckpt, hf_dir, _ = detox_files
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    obj = torch.load(ckpt, weights_only=True)
    obj["hyper_parameters"] = _Payload(marker)
    torch.save(obj, evil)
    with pytest.raises(ScorerError, match="never runs code from a checkpoint") as err:
        DetoxifyScorer("original", checkpoint=evil, hf_dir=hf_dir)
    assert "weights_only=False" in str(err.value) and "'state_dict': ck['state_dict']" in str(err.value)
    assert not marker.exists()
    with pytest.raises(TypeError):  # no switch turns the refusal off
        DetoxifyScorer("original", checkpoint=evil, hf_dir=hf_dir, trust_checkpoint=True)
    clean = tmp_path / "clean.ckpt"  # the recipe, applied to what the payload rode on
    torch.save({"config": obj["config"], "state_dict": obj["state_dict"]}, clean)
    DetoxifyScorer("original", checkpoint=clean, hf_dir=hf_dir)
    assert not marker.exists()
