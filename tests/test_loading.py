"""Model sources -> validated TransformerBridge models, on tiny random checkpoints of every arch.

Everything runs offline on checkpoints built by ``tests/tiny.py``; nothing is mocked: the
bridge, transformers and huggingface_hub are the real ones.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from mechclaims.errors import IncompatibleCheckpoints, ModelSourceError, NumericalError, UnsafeCheckpoint
from mechclaims.loading import (
    load_model,
    load_pair,
    parity_check,
    tokenizer_fingerprint,
)
from tests import tiny

TOKENS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3], [0, 11, 12, 13, 300, 301, 2, 9]])


def _logits(m) -> torch.Tensor:
    with torch.no_grad():
        return m.bridge(TOKENS, return_type="logits").to(torch.float64)


def _hf_value_vectors(m, layer: int) -> torch.Tensor:
    """Value vectors straight from the HF module, ``[d_mlp, d_model]`` (no bridge involved)."""
    hf = m.hf_model
    if m.architecture.startswith("GPT2"):
        return hf.transformer.h[layer].mlp.c_proj.weight  # Conv1D: [d_mlp, d_model]
    return hf.model.layers[layer].mlp.down_proj.weight.T  # Linear: [d_model, d_mlp]


@pytest.fixture(scope="module")
def loaded(tiny_pairs):
    """Lazily loaded base models, one per arch, shared by the module (read-only use)."""
    memo = {}

    def get(arch):
        if arch not in memo:
            memo[arch] = load_model(str(tiny_pairs[arch][0]))
        return memo[arch]

    return get


@pytest.fixture(scope="module")
def candidate_logits(gpt2_pair):
    return _logits(load_model(str(gpt2_pair[1])))


@pytest.fixture(scope="module")
def candidate_state(gpt2_pair):
    """The candidate's full state dict (tied lm_head included), as independent tensors."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gpt2_pair[1])
    return {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}


class Evil:
    """Unpickling this runs ``touch marker``: the payload a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# --------------------------------------------------------------------------------------------
# Every architecture


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_load_offline_shapes_and_gating(arch, loaded):
    m = loaded(arch)
    assert m.n_layers == 2 and m.d_model == 32
    assert m.d_mlp == (96 if arch == "gpt2" else 64)
    W = m.W_out()
    assert tuple(W.shape) == (m.n_layers, m.d_mlp, m.d_model)
    assert m.gated is (arch != "gpt2")
    # Raw HF weights: row i of W_out[l] is exactly the checkpoint's c_proj / down_proj row.
    for layer in range(m.n_layers):
        torch.testing.assert_close(W[layer].detach(), _hf_value_vectors(m, layer).detach(),
                                   rtol=0, atol=0)
    assert len(m.sha256) == 64 and m.describe()["gated_mlp"] is m.gated


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_parity_with_plain_transformers(arch, loaded):
    diff = parity_check(loaded(arch))
    assert 0.0 <= diff < 1e-4


def test_parity_check_detects_a_diverging_bridge(gpt2_pair):
    m = load_model(str(gpt2_pair[0]))
    w = m.hf_model.transformer.h[0].mlp.c_proj.weight
    with torch.no_grad():  # the bridge wraps these modules; the fresh plain model does not
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(NumericalError, match="tolerance"):
        parity_check(m)


def _check_mlp_write(m):
    names = {f"blocks.{l}.mlp.{h}" for l in range(m.n_layers) for h in ("hook_post", "out.hook_out")}
    with torch.no_grad():
        _, cache = m.bridge.run_with_cache(TOKENS, names_filter=lambda n: n in names)
    W, b = m.W_out().detach(), m.b_out().detach()
    assert tuple(b.shape) == (m.n_layers, m.d_model)
    for layer in range(m.n_layers):
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        out = cache[f"blocks.{layer}.mlp.out.hook_out"]
        assert post.shape[-1] == m.d_mlp and out.shape[-1] == m.d_model
        assert float(post.abs().max()) > 0  # a real forward, not an all-zero cache
        torch.testing.assert_close(post @ W[layer] + b[layer], out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_hook_post_times_W_out_is_the_mlp_write(arch, loaded):
    _check_mlp_write(loaded(arch))


@pytest.fixture(scope="module")
def gpt2_biased_dir(tmp_path_factory, tokenizer_dir):
    """A gpt2 whose biases are non-zero (the fixture's are HF-initialised zeros)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny.make_model("gpt2", len(tok), seed=7)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("gpt2-biased")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_mlp_write_includes_b_out(gpt2_biased_dir):
    m = load_model(str(gpt2_biased_dir))
    b = m.b_out().detach()
    assert float(b.abs().min()) > 0
    torch.testing.assert_close(b[1], m.hf_model.transformer.h[1].mlp.c_proj.bias.detach(), rtol=0, atol=0)
    _check_mlp_write(m)


# --------------------------------------------------------------------------------------------
# Pairs that cannot be compared


def test_pair_of_different_architectures(tiny_pairs):
    with pytest.raises(IncompatibleCheckpoints) as ei:
        load_pair(str(tiny_pairs["gpt2"][0]), str(tiny_pairs["llama"][1]))
    e = ei.value
    assert e.field == "architecture"
    assert (e.base_value, e.model_value) == ("GPT2LMHeadModel", "LlamaForCausalLM")
    msg = str(e)
    assert "architecture" in msg and "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg


@pytest.mark.parametrize(
    "over, field, values",
    [({"n_inner": 128}, "d_mlp", (96, 128)),
     ({"n_layer": 3}, "n_layers", (2, 3)),
     ({"n_embd": 48}, "d_model", (32, 48))],
)
def test_pair_of_different_shapes(over, field, values, gpt2_pair, tokenizer_dir, tmp_path):
    other_base, _ = tiny.make_pair(tmp_path / "other", "gpt2", tokenizer_dir, **over)
    with pytest.raises(IncompatibleCheckpoints) as ei:
        load_pair(str(gpt2_pair[0]), str(other_base))
    e = ei.value
    assert e.field == field and (e.base_value, e.model_value) == values
    assert field in str(e) and str(values[0]) in str(e) and str(values[1]) in str(e)


def _swap_two_vocab_ids(model_dir: Path) -> None:
    """Same size vocabulary, two tokens' ids exchanged: a different string -> id map."""
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = "the", "you"
    assert a in vocab and b in vocab
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["smaller-vocab", "swapped-ids"])
def test_pair_with_a_different_tokenizer(how, gpt2_pair, tmp_path):
    cand = tmp_path / "candidate"
    shutil.copytree(gpt2_pair[1], cand)
    if how == "smaller-vocab":
        tiny.make_tokenizer(cand, vocab_size=300)  # writes over the candidate's tokenizer files
    else:
        _swap_two_vocab_ids(cand)
    with pytest.raises(IncompatibleCheckpoints) as ei:
        load_pair(str(gpt2_pair[0]), str(cand))
    e = ei.value
    assert e.field == "tokenizer"
    assert "tokenizer" in str(e)
    assert "320 tokens" in str(e.base_value)
    assert ("300 tokens" if how == "smaller-vocab" else "320 tokens") in str(e.model_value)
    assert e.base_value != e.model_value


def test_compatible_pair_loads(gpt2_pair, candidate_logits):
    b, m = load_pair(str(gpt2_pair[0]), str(gpt2_pair[1]))
    assert b.sha256 != m.sha256
    assert float((_logits(m) - candidate_logits).abs().max()) == 0.0
    assert float((_logits(b) - candidate_logits).abs().max()) > 1e-3


# --------------------------------------------------------------------------------------------
# BASE::WEIGHTS


def _save_weights(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_base_plus_weights_file(suffix, gpt2_pair, candidate_state, candidate_logits, tmp_path):
    base_dir = str(gpt2_pair[0])
    f = _save_weights(candidate_state, tmp_path / f"dpo{suffix}")
    one = load_model(f"{base_dir}::{f}")
    assert one.source.endswith(f"::{f.resolve()}")
    b, two = load_pair(base_dir, str(f))
    for m in (one, two):
        assert float((_logits(m) - candidate_logits).abs().max()) < 1e-6
    assert float((_logits(b) - candidate_logits).abs().max()) > 1e-3  # the file was applied
    assert one.sha256 == two.sha256 != b.sha256
    if suffix == ".pt":
        assert parity_check(one) < 1e-4  # a BASE::WEIGHTS source reopens through the same path


@pytest.mark.parametrize("wrap", ["state", "state_dict", "model", "module-prefix", "no-lm-head"])
def test_trainer_style_pt_files(wrap, gpt2_pair, candidate_state, candidate_logits, tmp_path):
    sd = dict(candidate_state)
    if wrap == "module-prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "no-lm-head":  # tied embedding: lm_head.weight may be absent
        obj = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    else:
        obj = {wrap: sd, "step": 3, "epoch": 1}
    f = tmp_path / "ckpt.pt"
    torch.save(obj, f)
    m = load_model(f"{gpt2_pair[0]}::{f}")
    assert float((_logits(m) - candidate_logits).abs().max()) < 1e-6


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_with_a_wrong_shape(suffix, gpt2_pair, candidate_state, tmp_path):
    sd = dict(candidate_state)
    key = "transformer.h.0.mlp.c_fc.weight"
    sd[key] = torch.zeros(32, 50)
    f = _save_weights(sd, tmp_path / f"bad{suffix}")
    with pytest.raises(ModelSourceError) as ei:
        load_model(f"{gpt2_pair[0]}::{f}")
    msg = str(ei.value)
    assert key in msg and "(32, 50)" in msg and "(32, 96)" in msg


def test_weights_with_missing_and_unexpected_keys(gpt2_pair, candidate_state, tmp_path):
    sd = dict(candidate_state)
    gone = "transformer.h.1.mlp.c_proj.weight"
    del sd[gone]
    f = _save_weights(sd, tmp_path / "missing.safetensors")
    with pytest.raises(ModelSourceError, match=gone.replace(".", r"\.")):
        load_model(f"{gpt2_pair[0]}::{f}")
    sd = dict(candidate_state)
    extra = "transformer.h.7.mlp.c_fc.weight"
    sd[extra] = torch.zeros(3)
    f = _save_weights(sd, tmp_path / "extra.pt")
    with pytest.raises(ModelSourceError, match=extra.replace(".", r"\.")):
        load_model(f"{gpt2_pair[0]}::{f}")


def test_weights_of_another_architecture(gpt2_pair, llama_pair, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(next(Path(llama_pair[1]).glob("*.safetensors"))))
    f = _save_weights(sd, tmp_path / "llama.safetensors")
    with pytest.raises(ModelSourceError, match="does not match the base architecture"):
        load_pair(str(gpt2_pair[0]), str(f))


def test_pt_without_a_state_dict(gpt2_pair, tmp_path):
    f = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], f)
    with pytest.raises(ModelSourceError, match="state dict"):
        load_model(f"{gpt2_pair[0]}::{f}")


# --------------------------------------------------------------------------------------------
# Security: pickles that carry code are refused before any code runs


def _evil_pt(path: Path, marker: Path, wrap: bool = True) -> Path:
    torch.save({"transformer.wte.weight": Evil(marker)} if wrap else Evil(marker), path)
    return path


def test_the_evil_payload_is_live(tmp_path):
    """Control: an unrestricted unpickle of the same file does run the payload."""
    marker = tmp_path / "control-marker"
    f = _evil_pt(tmp_path / "evil.pt", marker)
    torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
@pytest.mark.parametrize("how", ["BASE::WEIGHTS", "pair"])
def test_malicious_weights_file_is_refused(suffix, how, gpt2_pair, tmp_path):
    marker = tmp_path / "pwned"
    f = _evil_pt(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(UnsafeCheckpoint) as ei:
        if how == "pair":
            load_pair(str(gpt2_pair[0]), str(f))
        else:
            load_model(f"{gpt2_pair[0]}::{f}")
    assert str(f) in str(ei.value)
    assert not marker.exists()


@pytest.mark.parametrize("wrap", [True, False])
def test_malicious_probe_file_is_refused(wrap, tmp_path):
    from mechclaims.probe import load_probe

    marker = tmp_path / "pwned"
    f = _evil_pt(tmp_path / "probe.pt", marker, wrap=wrap)
    with pytest.raises(UnsafeCheckpoint):
        load_probe(f)
    assert not marker.exists()


def test_raw_pickle_with_pt_suffix_is_refused(gpt2_pair, tmp_path):
    """A plain ``pickle.dump`` (not torch's zip format) with a .pt name."""
    marker = tmp_path / "pwned"
    f = tmp_path / "raw.pt"
    f.write_bytes(pickle.dumps({"x": Evil(marker)}))
    with pytest.raises(UnsafeCheckpoint):
        load_model(f"{gpt2_pair[0]}::{f}")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Bad sources


@pytest.mark.parametrize("src", ["/nonexistent/mechclaims-model-xyz", "./no-such-dir-xyz", "~/no-such-dir-xyz",
                                 "no-such-dir-xyz/config.json"])
def test_missing_local_path(src):
    with pytest.raises(ModelSourceError) as ei:
        load_model(src)
    assert src in str(ei.value) and "does not exist" in str(ei.value)


def test_missing_base_of_a_weights_file(candidate_state, tmp_path):
    f = _save_weights(candidate_state, tmp_path / "dpo.safetensors")
    missing = "/nonexistent/mechclaims-base-xyz"
    with pytest.raises(ModelSourceError, match=missing):
        load_model(f"{missing}::{f}")
    with pytest.raises(ModelSourceError, match=missing):
        load_pair(missing, str(f))


def test_missing_weights_file(gpt2_pair, tmp_path):
    f = tmp_path / "absent.safetensors"
    with pytest.raises(ModelSourceError, match="absent.safetensors"):
        load_model(f"{gpt2_pair[0]}::{f}")
    with pytest.raises(ModelSourceError, match="absent.safetensors"):
        load_pair(str(gpt2_pair[0]), str(f))


def test_bare_weights_file_needs_a_base(candidate_state, tmp_path):
    f = _save_weights(candidate_state, tmp_path / "dpo.pt")
    with pytest.raises(ModelSourceError, match=r"BASE::"):
        load_model(str(f))


def test_directory_without_config(tmp_path):
    d = tmp_path / "empty-model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="config.json"):
        load_model(str(d))


def test_directory_with_a_broken_config(gpt2_pair, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(gpt2_pair[0], d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="broken"):
        load_model(str(d))


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("repo", ["localorg/definitely-not-cached-xyz", "not-cached-model-xyz"])
def test_uncached_hub_id_offline(repo, empty_hub_cache):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.monotonic()
    with pytest.raises(ModelSourceError) as ei:
        load_model(repo)
    assert time.monotonic() - t0 < 10.0  # no network retries
    msg = str(ei.value)
    assert repo in msg and "HF_HUB_OFFLINE" in msg


def _install_in_hub_cache(cache: Path, repo: str, src: Path) -> Path:
    """The huggingface_hub cache layout: snapshots/<commit>/ files, refs/main -> commit."""
    org, name = repo.split("/")
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{org}--{name}"
    shutil.copytree(src, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


@pytest.mark.parametrize("repo", ["localorg/tiny-gpt2", "localorg/tiny-gpt2-v0.1"])
def test_hub_id_from_the_local_cache(repo, empty_hub_cache, gpt2_pair, candidate_logits):
    """Hub ids read from the local cache offline. Real ids often hold a dot
    (mistralai/Mistral-7B-v0.1, meta-llama/Llama-3.1-8B)."""
    _install_in_hub_cache(empty_hub_cache, repo, gpt2_pair[0])
    _install_in_hub_cache(empty_hub_cache, repo + "-dpo", gpt2_pair[1])
    from_dir = load_model(str(gpt2_pair[0]))
    m = load_model(repo)
    assert m.source == repo
    assert float((_logits(m) - _logits(from_dir)).abs().max()) == 0.0
    assert m.sha256 == from_dir.sha256  # hashed from the cached snapshot's files
    b, d = load_pair(repo, repo + "-dpo")
    assert float((_logits(d) - candidate_logits).abs().max()) == 0.0
    assert b.sha256 == from_dir.sha256 != d.sha256


def test_hub_id_plus_weights_file(empty_hub_cache, gpt2_pair, candidate_state, candidate_logits, tmp_path):
    _install_in_hub_cache(empty_hub_cache, "localorg/tiny-gpt2", gpt2_pair[0])
    f = _save_weights(candidate_state, tmp_path / "dpo.safetensors")
    m = load_model(f"localorg/tiny-gpt2::{f}")
    assert float((_logits(m) - candidate_logits).abs().max()) < 1e-6


# --------------------------------------------------------------------------------------------
# Tokenizer fingerprint


def test_tokenizer_fingerprint(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    a = AutoTokenizer.from_pretrained(tokenizer_dir)
    b = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert a is not b
    fa = tokenizer_fingerprint(a)
    assert fa == tokenizer_fingerprint(b) and len(fa) == 64
    other = AutoTokenizer.from_pretrained(tiny.make_tokenizer(tmp_path / "tok300", vocab_size=300))
    assert tokenizer_fingerprint(other) != fa
    swapped = tmp_path / "swapped"
    shutil.copytree(tokenizer_dir, swapped)
    _swap_two_vocab_ids(swapped)
    s = AutoTokenizer.from_pretrained(swapped)
    assert len(s) == len(a) and tokenizer_fingerprint(s) != fa
    # Same vocabulary, another special-token id: strings map to the same ids but padding differs.
    b.pad_token = b.eos_token
    assert tokenizer_fingerprint(b) != fa
