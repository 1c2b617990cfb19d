"""Bad inputs are refused with the project's error types and messages that name the file.

Every model here is a tiny real checkpoint written with ``save_pretrained``; "before loading
weights" is shown by making the weights file garbage and getting the family/tokenizer error
instead of a weights error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.errors import ModelSourceError, ProbeError, PromptError, UnsafeCheckpoint, UnsupportedModel
from mechclaims.loading import SUPPORTED_MODEL_TYPES, load_model
from mechclaims.probe import load_probe
from mechclaims.prompts import read_prompts
from tests import tiny


class Custom:
    """A plain custom class: pickling an instance needs a GLOBAL, so weights_only refuses it."""

    def __init__(self):
        self.x = 1


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _garbage(path: Path) -> Path:
    """Cut a weights file to its first bytes, so reading it fails."""
    data = path.read_bytes()
    path.write_bytes(data[: max(8, len(data) // 3)])
    return path


def _raises(exc_type, fn, *phrases, absent=()) -> str:
    """Run ``fn``; it must raise exactly ``exc_type`` (not a subclass) with every phrase, and
    none of the ``absent`` ones."""
    with pytest.raises(exc_type) as ei:
        fn()
    assert type(ei.value) is exc_type, repr(ei.value)
    msg = str(ei.value)
    for phrase in phrases:
        assert str(phrase) in msg, (phrase, msg)
    for phrase in absent:
        assert str(phrase) not in msg, (phrase, msg)
    return msg


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tokenizer_dir):
    """A tiny GPT-2 with its tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    d = tmp_path_factory.mktemp("bad") / "gpt2"
    tiny.make_model("gpt2", len(tok), seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _copy(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


# --------------------------------------------------------------------------------------------
# 1. Tokenizer files


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model")


@pytest.mark.parametrize("keep", [(), ("tokenizer_config.json",)], ids=["none", "config-only"])
@pytest.mark.parametrize("weights", ["intact", "garbage"])
def test_directory_without_tokenizer_files(keep, weights, gpt2_dir, tmp_path):
    d = _copy(gpt2_dir, tmp_path / "no-tokenizer", drop=[f for f in _TOKENIZER_FILES if f not in keep])
    if weights == "garbage":
        _garbage(d / "model.safetensors")
    msg = _raises(ModelSourceError, lambda: load_model(str(d)), "no-tokenizer", "tokenizer.json",
                  "vocab.json+merges.txt", "tokenizer.model")
    assert "truncated" not in msg


def test_weights_source_takes_the_tokenizer_from_its_base(gpt2_dir, tmp_path):
    base = _copy(gpt2_dir, tmp_path / "base-no-tok", drop=_TOKENIZER_FILES)
    w = _garbage(shutil.copy(gpt2_dir / "model.safetensors", tmp_path / "ft.safetensors"))
    _raises(ModelSourceError, lambda: load_model(f"{base}::{w}"), "base-no-tok", "tokenizer.json")


@pytest.mark.parametrize("weights", ["intact", "garbage"])
def test_tokenizer_far_smaller_than_the_vocabulary(weights, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    d = tmp_path / "big-vocab"
    tiny.make_model("gpt2", 4 * len(tok), seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    if weights == "garbage":
        _garbage(d / "model.safetensors")
    _raises(ModelSourceError, lambda: load_model(str(d)), "big-vocab", f"{len(tok)} tokens",
            f"vocab_size {4 * len(tok)}")


# --------------------------------------------------------------------------------------------
# 2. Unsupported families, refused from config.json before the weights are read


def _bert(d: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(d)
    return d


def _config_only(d: Path, make) -> Path:
    """A config of another family next to a garbage weights file."""
    make().save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"\x00garbage weights")
    return d


def _distilbert():
    from transformers import DistilBertConfig

    return DistilBertConfig(vocab_size=320, dim=16, n_layers=1, n_heads=2, hidden_dim=32)


def _opt():
    from transformers import OPTConfig

    cfg = OPTConfig(vocab_size=320, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                    num_attention_heads=2, word_embed_proj_dim=16)
    cfg.architectures = ["OPTForCausalLM"]
    return cfg


def _t5():
    from transformers import T5Config

    cfg = T5Config(vocab_size=320, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    cfg.architectures = ["T5ForConditionalGeneration"]
    return cfg


def _llama_classifier():
    cfg = tiny.config_for("llama", 320)
    cfg.architectures = ["LlamaForSequenceClassification"]
    return cfg


FAMILIES = {
    "bert": lambda d: _bert(d),
    "bert-garbage-weights": lambda d: _garbage(_bert(d) / "model.safetensors").parent,
    "distilbert": lambda d: _config_only(d, _distilbert),
    "opt": lambda d: _config_only(d, _opt),
    "t5": lambda d: _config_only(d, _t5),
    "llama-classifier": lambda d: _config_only(d, _llama_classifier),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unsupported_family_directory(family, tokenizer_dir, tmp_path):
    d = FAMILIES[family](tmp_path / family)
    shutil.copytree(tokenizer_dir, d, dirs_exist_ok=True)
    msg = _raises(UnsupportedModel, lambda: load_model(str(d)), str(d / "config.json"),
                  *SUPPORTED_MODEL_TYPES)
    assert "truncated" not in msg


def test_unsupported_family_hub_id(tokenizer_dir, tmp_path, monkeypatch):
    """A hub id is checked through AutoConfig (offline, from the local cache)."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / "models--localorg--tiny-bert"
    snap = _garbage(_bert(root / "snapshots" / commit) / "model.safetensors").parent
    shutil.copytree(tokenizer_dir, snap, dirs_exist_ok=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    _raises(UnsupportedModel, lambda: load_model("localorg/tiny-bert"), "localorg/tiny-bert", "bert",
            "gpt2")


# --------------------------------------------------------------------------------------------
# 3-5. Weights files: garbage vs. unsafe


def _hello(path: Path) -> Path:
    path.write_text("hello")
    return path


def _truncated(path: Path, gpt2_dir: Path) -> Path:
    data = (gpt2_dir / "model.safetensors").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "name, data, phrase",
    [
        ("trunc.safetensors", None, "truncated or not a safetensors file"),
        ("hello.safetensors", b"hello", "truncated or not a safetensors file"),
        ("x.pt", b"hello", "not a torch checkpoint"),
        ("empty.bin", b"", "not a torch checkpoint"),
        ("zeros.pt", b"\x00garbage" * 16, "not a torch checkpoint"),
    ],
)
def test_garbage_weights_file(name, data, phrase, gpt2_dir, tmp_path):
    f = tmp_path / name
    if data is None:
        _truncated(f, gpt2_dir)
    else:
        f.write_bytes(data)
    _raises(ModelSourceError, lambda: load_model(f"{gpt2_dir}::{f}"), str(f), phrase)


def test_unsafe_pickle_keeps_torchs_warning(gpt2_dir, tmp_path):
    f = tmp_path / "custom.pt"
    torch.save({"transformer.wte.weight": Custom()}, f)
    _raises(UnsafeCheckpoint, lambda: load_model(f"{gpt2_dir}::{f}"), str(f), "arbitrary code execution",
            "Custom", "safetensors")


def test_truncated_safetensors_in_a_directory(gpt2_dir, tmp_path):
    d = _copy(gpt2_dir, tmp_path / "trunc-dir")
    _truncated(d / "model.safetensors", gpt2_dir)
    _raises(ModelSourceError, lambda: load_model(str(d)), str(d / "model.safetensors"), "truncated")


# --------------------------------------------------------------------------------------------
# 4. HF directory with pickled pytorch_model.bin


def _bin_dir(gpt2_dir: Path, d: Path, state) -> Path:
    d = _copy(gpt2_dir, d, drop=["*.safetensors"])
    torch.save(state, d / "pytorch_model.bin")
    return d


def test_directory_with_a_plain_pytorch_model_bin_loads(gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    d = _bin_dir(gpt2_dir, tmp_path / "bin-dir", hf.state_dict())
    m = load_model(str(d))
    tokens = torch.tensor([[0, 5, 17, 42, 99]])
    want = hf(tokens).logits
    got = m.bridge(tokens, return_type="logits")
    assert float((want - got).abs().max()) < 1e-5


@pytest.mark.parametrize("payload", ["custom", "evil"])
def test_directory_with_an_unsafe_pytorch_model_bin(payload, gpt2_dir, tmp_path):
    marker = tmp_path / "pwned"
    obj = Custom() if payload == "custom" else Evil(marker)
    d = _bin_dir(gpt2_dir, tmp_path / "evil-bin", {"transformer.wte.weight": obj})
    _raises(UnsafeCheckpoint, lambda: load_model(str(d)), str(d / "pytorch_model.bin"),
            "arbitrary code")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# 6. Probe .npy files


def _npy(arr, **kw):
    def make(path: Path) -> Path:
        np.save(path, arr, **kw)
        return path
    return make


@pytest.mark.parametrize(
    "make, phrases",
    [
        (_npy(np.zeros(0)), ["empty", "(0,)", "(d_model,)"]),
        (_npy(np.zeros((0, 8))), ["empty", "(0, 8)", "(d_model,)"]),
        (_npy(np.array(["a", "b", "c"])), ["<U1", "(3,)", "numeric", "(d_model,)"]),
        (_npy(np.array([1.0, "x", None], dtype=object), allow_pickle=True), ["Object arrays", "(d_model,)"]),
        (_npy(np.ones(4, dtype=bool)), ["bool", "(4,)", "(d_model,)"]),
        (_npy(np.ones((3, 4), dtype=np.float32)), ["(3, 4)", "float32", "(1, d_model)"]),
        (_npy(np.ones((1, 2, 4))), ["(1, 2, 4)", "float64", "(d_model,)"]),
        (lambda p: _hello(p), ["not a .npy file", "(d_model,)"]),
    ],
    ids=["empty", "empty-2d", "unicode", "object", "bool", "3x4", "3d", "text"],
)
def test_unusable_npy_probe(make, phrases, tmp_path):
    f = make(tmp_path / "probe.npy")
    _raises(ProbeError, lambda: load_probe(f), str(f), *phrases)


def test_text_file_named_pt_probe(tmp_path):
    f = _hello(tmp_path / "probe.pt")
    _raises(ProbeError, lambda: load_probe(f), str(f), "not a torch checkpoint")


# --------------------------------------------------------------------------------------------
# 7-8. Prompt files


@pytest.mark.parametrize(
    "data, want",
    [
        ("prompt,toxicity\nhello there,0.1\n\"a, quoted one\",0.9\n", ["hello there", "a, quoted one"]),
        ("id,Text\n1,first\n2,\"multi\nline\"\n", ["first", "multi\nline"]),
        ("\ufeffPROMPT\r\nonly one\r\n", ["only one"]),
    ],
    ids=["prompt", "text-column", "bom-crlf"],
)
def test_csv_prompts(data, want, tmp_path):
    f = tmp_path / "prompts.csv"
    f.write_text(data, encoding="utf-8", newline="")
    assert read_prompts(f) == want


@pytest.mark.parametrize(
    "data, phrases",
    [
        ("hello there\nanother prompt\n", ["'hello there'", "'prompt' or 'text'"]),
        ("id,sentence\n1,hi\n", ["'id', 'sentence'", "'prompt' or 'text'"]),
        ("prompt,score\n", ["no prompts"]),
        ("", ["no prompts"]),
        ("id,prompt\n1,fine\n2\n", [":3:", "1 fields"]),
        ("prompt\nfine\n\"\"\n", [":3:", "empty"]),
    ],
    ids=["no-header", "other-columns", "header-only", "empty", "short-row", "empty-prompt"],
)
def test_bad_csv_prompts(data, phrases, tmp_path):
    f = tmp_path / "prompts.csv"
    f.write_text(data, encoding="utf-8")
    _raises(PromptError, lambda: read_prompts(f), str(f), *phrases)


def test_prompt_path_is_a_directory(tmp_path):
    d = tmp_path / "prompts.jsonl"
    d.mkdir()
    msg = _raises(PromptError, lambda: read_prompts(d), str(d), "is a directory", ".jsonl", ".csv")
    assert "does not exist" not in msg
