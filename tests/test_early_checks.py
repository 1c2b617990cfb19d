"""Bad inputs are refused before any weights are read (issue 18), with messages that name the file,
say what was expected and what to do.

Every model is a tiny real checkpoint (``tests.tiny``) written with ``save_pretrained`` and then
corrupted. "Before any weights" is shown two ways: the loaders that read weights (``open_hf``,
transformers' ``from_pretrained``, ``torch.load``, ``safetensors.torch.load_file``, PEFT) are
counted and must not be called, and where the check is about something else the weights file is
garbage and the early error still comes first. Through pytest the session stops with exit
status 4 and the ``--cache-dir`` is never created.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.errors import (ConfigError, IncompatibleCheckpoints, ModelNotFound, ModelSourceError, ProbeError,
                               UnsafeCheckpoint, UnsupportedModel)
from tests import tiny
from tests.test_bad_inputs import Custom, Evil, _raises  # the bad-input matrix's pickles and assertion

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
pytest_plugins = ["pytester"]





# --------------------------------------------------------------------------------------------
# Fixtures: tiny checkpoints, a probe and prompts


def _save(model, tok, d: Path) -> Path:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("early")


@pytest.fixture(scope="module")
def gpt2_dir(root, tok):
    return _save(tiny.make_model("gpt2", len(tok), seed=0), tok, root / "gpt2")


@pytest.fixture(scope="module")
def gpt2_cand(root, tok):
    return _save(tiny.perturb(tiny.make_model("gpt2", len(tok), seed=0), seed=1), tok, root / "gpt2-cand")


@pytest.fixture(scope="module")
def llama_dir(root, tok):
    return _save(tiny.make_model("llama", len(tok), seed=0), tok, root / "llama")


@pytest.fixture(scope="module")
def files(root):
    """A probe for d_model 32 (both tiny families) and a prompt file."""
    np.save(root / "probe.npy", np.random.default_rng(0).standard_normal(32))
    (root / "prompts.txt").write_text("\n".join(tiny.PROMPTS) + "\n")
    return {"probe": str(root / "probe.npy"), "prompts": str(root / "prompts.txt")}


@pytest.fixture
def loads(monkeypatch):
    """Every call into a loader that reads weights, by name; the calls go through."""
    import peft
    import safetensors.torch
    from transformers import PreTrainedModel

    import mechclaims.loading as loading

    calls: list[str] = []

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(loading, "open_hf", counted("open_hf", loading.open_hf))
    monkeypatch.setattr(torch, "load", counted("torch.load", torch.load))
    monkeypatch.setattr(safetensors.torch, "load_file", counted("load_file", safetensors.torch.load_file))
    real_pm = PreTrainedModel.from_pretrained.__func__
    monkeypatch.setattr(PreTrainedModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (calls.append("from_pretrained"), real_pm(cls, *a, **k))[1]))
    real_peft = peft.PeftModel.from_pretrained.__func__
    monkeypatch.setattr(peft.PeftModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (calls.append("peft"), real_peft(cls, *a, **k))[1]))
    return calls


def _resolve(files, tmp_path, model, base=None, **over):
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run

    cfg = {"model": str(model), "probe": files["probe"], "prompts": files["prompts"],
           "report": str(tmp_path / "out" / "claims.html"), "cache_dir": str(tmp_path / "cache"), **over}
    if base is not None:
        cfg["base"] = str(base)
    return resolve_run(build_config(cfg))


def _copy(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00garbage weights" * 4)
    return path


def _state(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(path).items()}  # cloned: the file is rewritten below


def _rewrite(path: Path, change) -> Path:
    """Rewrite a safetensors file with ``change(state)`` applied (a valid file, other tensors)."""
    from safetensors.torch import save_file

    state = _state(path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})
    return path


def _transpose(key: str):
    def change(state):
        state[key] = state[key].T.contiguous()
    return change


def _set_model_type(d: Path, model_type: str, arch: str) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type=model_type, architectures=[arch])
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _adapter(gpt2_dir: Path, d: Path) -> Path:
    """A real LoRA adapter (PEFT) on the tiny GPT-2, saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["c_fc"], fan_in_fan_out=True)).save_pretrained(d)
    assert (d / "adapter_model.safetensors").is_file()
    return d


@pytest.fixture(scope="module")
def adapter_dir(root, gpt2_dir):
    return _adapter(gpt2_dir, root / "adapter")


# --------------------------------------------------------------------------------------------
# 1. config.json: unsupported families, found in resolve_run


def test_unsupported_model_type_is_refused_in_resolve_run(files, gpt2_dir, tmp_path, loads):
    d = _set_model_type(_copy(gpt2_dir, tmp_path / "opt"), "opt", "OPTForCausalLM")
    _garbage(d / "model.safetensors")
    _raises(UnsupportedModel, lambda: _resolve(files, tmp_path, d, base=gpt2_dir), str(d / "config.json"),
            "'opt'", "gpt2, llama", "pick a checkpoint")
    assert loads == [] and not (tmp_path / "cache").exists()


def test_unsupported_base_is_refused_in_resolve_run(files, gpt2_dir, tmp_path, loads):
    base = _set_model_type(_copy(gpt2_dir, tmp_path / "cls"), "gpt2", "GPT2ForSequenceClassification")
    _raises(UnsupportedModel, lambda: _resolve(files, tmp_path, gpt2_dir, base=base), str(base / "config.json"),
            "GPT2ForSequenceClassification", "causal language model")
    assert loads == []


# --------------------------------------------------------------------------------------------
# 2. Pickles: pytorch_model.bin and adapter_model.bin, disassembled, never run


@pytest.mark.parametrize("payload", ["custom", "evil"])
def test_unsafe_pytorch_model_bin_is_refused_in_resolve_run(payload, files, gpt2_dir, tmp_path, loads):
    marker = tmp_path / "pwned"
    d = _copy(gpt2_dir, tmp_path / "bin", drop=["*.safetensors"])
    torch.save({"transformer.wte.weight": Custom() if payload == "custom" else Evil(marker)},
               d / "pytorch_model.bin")
    _raises(UnsafeCheckpoint, lambda: _resolve(files, tmp_path, d, base=gpt2_dir), str(d / "pytorch_model.bin"),
            "Custom" if payload == "custom" else "system", "arbitrary code execution", ".safetensors")
    assert loads == [] and not marker.exists()


@pytest.mark.parametrize("payload", ["custom", "evil"])
def test_unsafe_adapter_model_bin_is_refused_in_resolve_run(payload, files, gpt2_dir, adapter_dir, tmp_path,
                                                              loads):
    marker = tmp_path / "pwned"
    ad = _copy(adapter_dir, tmp_path / "ad", drop=["adapter_model.safetensors"])
    torch.save({"x": Custom() if payload == "custom" else Evil(marker)}, ad / "adapter_model.bin")
    _raises(UnsafeCheckpoint, lambda: _resolve(files, tmp_path, ad, base=gpt2_dir), str(ad / "adapter_model.bin"),
            "arbitrary code execution", "adapter_model.safetensors", absent=["weights_only=False"])
    assert loads == [] and not marker.exists()


def test_an_adapter_bin_of_tensors_passes_and_merges(files, gpt2_dir, adapter_dir, tmp_path):
    """No false alarm: PEFT's own pickled adapter (tensors only) is accepted and loads."""
    from mechclaims.loading import load_model

    ad = _copy(adapter_dir, tmp_path / "ad-bin", drop=["adapter_model.safetensors"])
    torch.save(_state(adapter_dir / "adapter_model.safetensors"), ad / "adapter_model.bin")
    run = _resolve(files, tmp_path, ad, base=gpt2_dir)
    assert run.model.kind == "adapter"
    assert load_model(run.model, memo=False).n_layers == 2


# --------------------------------------------------------------------------------------------
# 3. safetensors headers, read by hand


def _header_not_json(f: Path):
    f.write_bytes((12).to_bytes(8, "little") + b"{not json!!}" + b"\x00" * 64)


def _cut_short(f: Path):
    f.write_bytes(f.read_bytes()[:-64])


def _length_beyond_file(f: Path):
    f.write_bytes((10**6).to_bytes(8, "little") + b"{}")


@pytest.mark.parametrize("corrupt, phrases", [
    (_header_not_json, ["12-byte header is not JSON", "truncated or not a safetensors file"]),
    (_cut_short, ["declares", "bytes of tensor data", "cut short", "Re-download or re-export"]),
    (_length_beyond_file, ["header of 1000000 bytes", "2 bytes follow them"]),
], ids=["not-json", "cut-short", "length-beyond-file"])
def test_bad_safetensors_header_is_refused_in_resolve_run(corrupt, phrases, files, gpt2_dir, tmp_path, loads):
    d = _copy(gpt2_dir, tmp_path / "st")
    corrupt(d / "model.safetensors")
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, d, base=gpt2_dir), str(d / "model.safetensors"),
            *phrases)
    assert loads == [] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("arch, key, want", [
    ("gpt2", "transformer.h.0.mlp.c_fc.weight", "(32, 96)"),
    ("gpt2", "transformer.wte.weight", "d_vocab"),
    ("llama", "model.layers.1.mlp.gate_proj.weight", "(64, 32)"),
    ("llama", "model.layers.0.mlp.down_proj.weight", "(32, 64)"),
])
def test_transposed_weight_is_named_from_the_header(arch, key, want, files, gpt2_dir, llama_dir, tmp_path, loads):
    src = gpt2_dir if arch == "gpt2" else llama_dir
    d = _copy(src, tmp_path / "transposed")
    _rewrite(d / "model.safetensors", _transpose(key))
    loads.clear()
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, d, base=src), str(d / "model.safetensors"), key,
            want, "transposed", str(d / "config.json"), "Re-export")
    assert loads == []


def test_a_weights_file_is_checked_against_its_base(files, gpt2_dir, tmp_path, loads):
    """BASE::WEIGHTS: the weights' header against the base's config.json, before the base loads."""
    w = _rewrite(Path(shutil.copy(gpt2_dir / "model.safetensors", tmp_path / "dpo.safetensors")),
                 _transpose("transformer.h.1.mlp.c_proj.weight"))
    loads.clear()
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, f"{gpt2_dir}::{w}", base=gpt2_dir), str(w),
            "transformer.h.1.mlp.c_proj.weight", "(96, 32)", "transposed")
    from mechclaims.loading import load_model

    _raises(ModelSourceError, lambda: load_model(f"{gpt2_dir}::{w}", memo=False), "transposed")
    assert loads == []  # load_model too: the base was never opened


# --------------------------------------------------------------------------------------------
# 4. Sharded checkpoints


@pytest.fixture(scope="module")
def sharded(root, gpt2_dir, tok):
    from transformers import AutoModelForCausalLM

    d = root / "sharded"
    AutoModelForCausalLM.from_pretrained(gpt2_dir).save_pretrained(d, max_shard_size="20KB")
    tok.save_pretrained(d)
    assert len(list(d.glob("model-*.safetensors"))) > 2
    return d


def _reshard(d: Path, new_name: str, *, pickle_it: bool) -> str:
    """Move the first shard to ``new_name`` (a torch pickle of its tensors, or the same bytes)
    and point the index at it."""
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    if pickle_it:
        torch.save(_state(d / first), d / new_name)
        (d / first).unlink()
    else:
        (d / first).rename(d / new_name)
    index["weight_map"] = {k: (new_name if v == first else v) for k, v in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return new_name


@pytest.mark.parametrize("new_name, pickle_it", [("pytorch_model-00001.bin", True), ("model-00001.npz", False)],
                         ids=["pickle-shard", "renamed-shard"])
def test_index_shard_that_is_not_safetensors(new_name, pickle_it, files, gpt2_dir, sharded, tmp_path, loads):
    d = _copy(sharded, tmp_path / "sh")
    _reshard(d, new_name, pickle_it=pickle_it)
    loads.clear()
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, d, base=gpt2_dir),
            str(d / "model.safetensors.index.json"), repr(new_name), "not a .safetensors file", "save_pretrained")
    assert loads == []


def test_index_with_an_empty_weight_map(files, gpt2_dir, sharded, tmp_path, loads):
    d = _copy(sharded, tmp_path / "empty-map")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    (d / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": {}}))
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, d, base=gpt2_dir),
            str(d / "model.safetensors.index.json"), "weight_map is empty", absent=["list index"])
    assert loads == []


def test_a_sharded_checkpoint_passes(files, gpt2_dir, sharded, tmp_path, loads):
    assert _resolve(files, tmp_path, sharded, base=gpt2_dir).model.kind == "dir"
    assert loads == []


# --------------------------------------------------------------------------------------------
# 5. Paths that exist are not called missing


def _ckpt_holder(tmp_path, gpt2_dir):
    d = tmp_path / "run"
    _copy(gpt2_dir, d / "checkpoint-2")
    return d


@pytest.mark.parametrize("make, phrases", [
    (lambda t, g: g / "config.json", ["is a file", "not a model directory", "holds the model (/"]),
    (lambda t, g: f"{g}::{g}", ["is a directory", "not a weights file", "--model DIR"]),
    (lambda t, g: _ckpt_holder(t, g), ["without config.json", "checkpoint-2/", "mechclaims sweep"]),
    (lambda t, g: (t / "empty").mkdir() or t / "empty", ["without config.json", "It is empty"]),
], ids=["config-file", "dir-as-weights", "trainer-dir", "empty-dir"])
def test_existing_paths_are_not_said_to_be_missing(make, phrases, files, gpt2_dir, tmp_path, loads):
    model = make(tmp_path, gpt2_dir)
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, model, base=gpt2_dir), *phrases,
            absent=["does not exist"])
    assert loads == []


def test_a_probe_path_that_is_a_directory(files, gpt2_dir, gpt2_cand, tmp_path):
    (tmp_path / "probe.npy").mkdir()
    _raises(ProbeError, lambda: _resolve(files, tmp_path, gpt2_cand, base=gpt2_dir, probe=str(tmp_path / "probe.npy")),
            "is a directory", absent=["does not exist"])


# --------------------------------------------------------------------------------------------
# 6. Tokenizer that is custom code


def test_custom_code_tokenizer_without_tokenizer_json(files, gpt2_dir, tmp_path, loads):
    d = _copy(gpt2_dir, tmp_path / "custom-tok")
    marker = tmp_path / "custom-code-ran"
    spec = json.loads((d / "tokenizer.json").read_text())["model"]
    (d / "vocab.json").write_text(json.dumps(spec["vocab"]))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in spec["merges"]) + "\n")
    (d / "tokenizer.json").unlink()
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="MyTokenizer", auto_map={"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]})
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "tokenization_mine.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _garbage(d / "model.safetensors")
    _raises(ModelSourceError, lambda: _resolve(files, tmp_path, d, base=gpt2_dir), str(d / "tokenizer_config.json"),
            "custom code", "no tokenizer.json", "MyTokenizer", "Copy tokenizer.json")
    from mechclaims.loading import load_model

    _raises(ModelSourceError, lambda: load_model(str(d), memo=False), "custom code")  # load_model too
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# 7. Two sources: the same model, another architecture


def test_base_and_model_with_one_sha256(files, gpt2_dir, tmp_path, loads):
    twin = _copy(gpt2_dir, tmp_path / "twin")
    msg = _raises(ConfigError, lambda: _resolve(files, tmp_path, twin, base=gpt2_dir), "same model",
                  "every claim is undefined", "--base (or [tool.mechclaims] base)", "check the two paths")
    from mechclaims.sources import resolve_source

    assert resolve_source(str(gpt2_dir)).sha256[:12] in msg
    assert loads == []


def test_another_architecture_is_found_from_config_json(files, gpt2_dir, tok, tmp_path, loads):
    deeper = _save(tiny.make_model("gpt2", len(tok), seed=0, n_layer=3), tok, tmp_path / "deeper")
    loads.clear()
    _raises(IncompatibleCheckpoints, lambda: _resolve(files, tmp_path, deeper, base=gpt2_dir), "n_layers",
            str(deeper / "config.json"), str(gpt2_dir / "config.json"), "before any weights were loaded")
    assert loads == []


# --------------------------------------------------------------------------------------------
# 8. An adapter's base


def test_an_adapters_relative_base_is_read_from_the_adapter_directory(files, gpt2_dir, adapter_dir, tmp_path,
                                                                       monkeypatch):
    ad = _copy(adapter_dir, gpt2_dir.parent / f"ad-rel-{tmp_path.name}")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = f"../{gpt2_dir.name}"
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ../gpt2 from here does not exist
    run = _resolve(files, tmp_path, ad)
    assert run.base.location == str(gpt2_dir.resolve())
    assert run.base_from == "adapter_config.json base_model_name_or_path"


def test_an_adapters_missing_base_says_where_it_came_from(files, adapter_dir, tmp_path, loads):
    ad = _copy(adapter_dir, tmp_path / "ad-missing")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "./no-such-base"
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    _raises(ModelNotFound, lambda: _resolve(files, tmp_path, ad), "adapter_config.json", "./no-such-base",
            str(ad / "no-such-base"), "--base BASE")
    from mechclaims.sources import resolve_source

    _raises(ModelNotFound, lambda: resolve_source(str(ad)), str(ad / "adapter_config.json"),
            "read from the adapter directory", "--base BASE")
    assert loads == []


# --------------------------------------------------------------------------------------------
# 9. Non-finite weights: named once loaded, before any generation


def test_nan_weights_are_named_before_generation(files, gpt2_dir, tmp_path, monkeypatch):
    import mechclaims.stats as stats
    from mechclaims.analysis import analyze

    d = _copy(gpt2_dir, tmp_path / "nan")
    key = "transformer.h.1.mlp.c_proj.weight"
    _rewrite(d / "model.safetensors", lambda s: s[key].__setitem__((3, 5), float("nan")))
    generated = []
    real = stats.greedy_generate
    monkeypatch.setattr(stats, "greedy_generate", lambda *a, **k: (generated.append(1), real(*a, **k))[1])
    run = _resolve(files, tmp_path, d, base=gpt2_dir)  # weights are not read here: it passes
    _raises(ModelSourceError, lambda: analyze(run.base, run.model, run.probe, list(run.prompts), cache_dir=False),
            "nan", "transformer.h.1.mlp.c_proj.weight", "1 non-finite values (1 NaN, 0 inf)", "earlier checkpoint")
    assert generated == []


# --------------------------------------------------------------------------------------------
# 10. A sweep over checkpoints of different architectures


_C0_ONLY = '''
from mechclaims.claim import Check, claim
from mechclaims.metrics import net


@claim("C0", "net-reduction", statement="net sum of deltas is positive.", checks=[Check("net", ">", 0.0, "net")],
       source="test", paper_value="-", tags=("gate",))
def test_C0_net_reduction(a, ctx):
    return {"net": net(a)}
'''


def test_sweep_names_the_other_architecture_and_keeps_the_rest(files, gpt2_dir, gpt2_cand, tok, tmp_path, capsys):
    from mechclaims.cli import main

    run = tmp_path / "run"
    _copy(gpt2_cand, run / "checkpoint-2")
    _save(tiny.make_model("gpt2", len(tok), seed=3, n_layer=3), tok, run / "checkpoint-4")
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "test_c0.py").write_text(_C0_ONLY)
    report = tmp_path / "out" / "sweep.html"
    rc = main(["sweep", str(run), "--base", str(gpt2_dir), "--probe", files["probe"], "--prompts", files["prompts"],
               "--claims-dir", str(claims), "--max-new-tokens", "4", "--bootstrap", "20",
               "--cache-dir", str(tmp_path / "cache"), "--report", str(report)])
    err = capsys.readouterr().err
    assert rc == 4  # a setup error, after the report of the computed checkpoints is written
    assert "checkpoint-4" in err and "n_layers" in err and "checkpoint-2" not in err.split("left out")[-1]
    doc = json.loads(report.with_suffix(".json").read_text())
    assert [c["label"] for c in doc["checkpoints"]] == ["checkpoint-2"]  # computed, kept, reported
    assert [s["label"] for s in doc["skipped"]] == ["checkpoint-4"] and "n_layers" in doc["skipped"][0]["reason"]
    assert "Left out: checkpoint <b>checkpoint-4</b>" in report.read_text()


# --------------------------------------------------------------------------------------------
# 11. Through pytest: exit status 4, nothing written to the cache


def _bad_opt(tmp, g, a):
    d = _set_model_type(_copy(g, tmp / "opt"), "opt", "OPTForCausalLM")
    _garbage(d / "model.safetensors")
    return d, "'opt'"


def _bad_transposed(tmp, g, a):
    d = _copy(g, tmp / "transposed")
    _rewrite(d / "model.safetensors", _transpose("transformer.h.0.mlp.c_fc.weight"))
    return d, "transposed"


def _bad_adapter_bin(tmp, g, a):
    ad = _copy(a, tmp / "ad", drop=["adapter_model.safetensors"])
    torch.save({"x": Custom()}, ad / "adapter_model.bin")
    return ad, "adapter_model.bin"


def _bad_shard(tmp, g, a):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp / "sh"
    AutoModelForCausalLM.from_pretrained(g).save_pretrained(d, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(g).save_pretrained(d)
    _reshard(d, "pytorch_model-00001.bin", pickle_it=True)
    return d, "not a .safetensors file"


@pytest.mark.parametrize("make", [_bad_opt, _bad_transposed, _bad_adapter_bin, _bad_shard],
                         ids=["model-type", "transposed", "adapter-bin", "index-shard"])
def test_pytest_stops_with_status_4_and_an_empty_cache(make, pytester, files, gpt2_dir, adapter_dir, tmp_path,
                                                        loads):
    model, phrase = make(tmp_path, gpt2_dir, adapter_dir)
    loads.clear()
    cache = tmp_path / "cache"
    res = pytester.runpytest_inprocess(
        CLAIMS, "-k", "C0", "--model", str(model), "--base", str(gpt2_dir), "--probe", files["probe"],
        "--prompts", files["prompts"], "--cache-dir", str(cache), "--report", str(tmp_path / "out" / "claims.html"),
        "-p", "no:randomly")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()[-2000:]
    assert phrase in res.stderr.str() and str(model) in res.stderr.str()
    assert not cache.exists() or not any(cache.iterdir())
    assert loads == []


def test_pytest_refuses_one_model_as_both(pytester, files, gpt2_dir, tmp_path, loads):
    cache = tmp_path / "cache"
    res = pytester.runpytest_inprocess(
        CLAIMS, "-k", "C0", "--model", str(gpt2_dir), "--base", str(gpt2_dir), "--probe", files["probe"],
        "--prompts", files["prompts"], "--cache-dir", str(cache), "--report", str(tmp_path / "out" / "claims.html"),
        "-p", "no:randomly")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "same model" in res.stderr.str()
    # hashing the two (to compare them) memoises file hashes; no result is computed or cached
    assert {p.name for p in cache.iterdir()} <= {"file-hashes.json"} if cache.exists() else True
    assert loads == []
