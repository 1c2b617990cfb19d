"""``--device-map``: a model placed by Accelerate (``from_pretrained(..., device_map=...)``) gives
the statistics of the same model loaded whole.

A CPU machine has one device, so the splits here are the ones a CPU can hold: every module
mapped to ``cpu`` explicitly (the device-map loading path), ``"auto"`` under a ``max_memory``
budget, and one block offloaded to ``disk`` (Accelerate dispatches the model: that block's
weights live on the meta device and its hooks load them for each forward, the mechanism that
also moves activations between GPUs). The statistics must be bitwise equal to the unsplit
load's: the same kernels run on the same values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechclaims.config import ClaimsConfig, build_config
from mechclaims.devices import parse_device_map
from mechclaims.errors import ConfigError, ModelSourceError
from mechclaims.loading import load_model, load_pair
from mechclaims.opening import _placement_kwargs
from mechclaims.probe import Probe
from mechclaims.runspec import check_device_map
from mechclaims.sources import Source
from mechclaims.stats import StatsSettings, collect_pair
from tests import tiny

SETTINGS = StatsSettings(max_new_tokens=5, batch_size=4, max_chunks=4)
MODULES = ("transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1", "transformer.ln_f",
           "lm_head")
ALL_CPU = {m: "cpu" for m in MODULES}
DISK_H1 = {**ALL_CPU, "transformer.h.1": "disk"}


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("devmap")
    tok = tiny.make_tokenizer(root / "tok")
    return tuple(str(d) for d in tiny.make_pair(root / "gpt2", "gpt2", tok))


@pytest.fixture(scope="module")
def probe():
    return Probe(torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def unsplit(gpt2_dirs, probe):
    base, model = load_pair(*gpt2_dirs)
    return collect_pair(base, model, list(tiny.PROMPTS), probe, SETTINGS, progress=False)


def _assert_same_stats(got, want):
    for side in ("base", "model"):
        a, b = getattr(got, side), getattr(want, side)
        np.testing.assert_array_equal(a.continuations, b.continuations)
        for name in ("act_sum", "count", "mlp_out_proj_sum", "resid_post_proj_sum"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{side} {name}")


@pytest.mark.parametrize("placement", [
    pytest.param({"device_map": ALL_CPU}, id="every-module-cpu"),
    pytest.param({"device_map": "auto", "max_memory": {"cpu": "2GB"}}, id="auto-max-memory"),
    pytest.param({"device_map": DISK_H1}, id="block-1-on-disk"),
])
def test_split_load_gives_the_unsplit_statistics(gpt2_dirs, probe, unsplit, placement, tmp_path):
    if "disk" in str(placement["device_map"]):
        placement = {**placement, "offload_folder": str(tmp_path / "offload")}
    base, model = load_pair(*gpt2_dirs, **placement)
    assert base.device == model.device == "cpu"  # where the inputs go: the embeddings' device
    assert base.device_map and base.describe()["device_map"] == base.device_map
    if "disk" in str(placement["device_map"]):
        # Really dispatched: block 1's weights are not in memory, Accelerate's hooks bring them.
        for m in (base, model):
            assert m.hf_model.hf_device_map["transformer.h.1"] == "disk"
            assert m.hf_model.transformer.h[1].mlp.c_proj.weight.device.type == "meta"
            assert hasattr(m.hf_model.transformer.h[1], "_hf_hook")
    got = collect_pair(base, model, list(tiny.PROMPTS), probe, SETTINGS, progress=False)
    _assert_same_stats(got, unsplit)


def test_a_device_mapped_rerun_is_read_from_the_cache(gpt2_dirs, probe, unsplit, tmp_path):
    """The cache keys record the map as given (``devices.placement_key``), so a rerun under the
    same map loads no model, and a run without it does not take the mapped run's numbers."""
    import json

    from mechclaims.analysis import analyze
    from mechclaims.attribution import WeightTerms

    run = dict(cache_dir=tmp_path, device_map=json.dumps(DISK_H1), progress=False)
    first = analyze(*gpt2_dirs, probe, list(tiny.PROMPTS), SETTINGS, **run)
    again = analyze(*gpt2_dirs, probe, list(tiny.PROMPTS), SETTINGS, **run)
    assert not first.provenance["from_cache"] and again.provenance["from_cache"] and again.base is None
    key = again.provenance["statistics"]["cache_key"]
    assert key["device_type"] == "map" and json.loads(key["device_map"]) == DISK_H1
    _assert_same_stats(again.stats, unsplit)
    plain = analyze(*gpt2_dirs, probe, list(tiny.PROMPTS), SETTINGS, cache_dir=tmp_path, progress=False)
    assert not plain.provenance["from_cache"] and plain.provenance["statistics"]["cache_key"]["device_type"] == "cpu"
    # The weight terms of the offloaded block were read while Accelerate had it loaded.
    for name in WeightTerms.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(first.weights, name), getattr(plain.weights, name), err_msg=name)


def test_json_device_map_string_is_read(gpt2_dirs):
    import json

    m = load_model(gpt2_dirs[0], memo=False, device_map=json.dumps(ALL_CPU))
    assert json.loads(m.device_map) == ALL_CPU


def test_without_a_device_map_nothing_changes(gpt2_dirs):
    from mechclaims.devices import RowShape

    m = load_model(gpt2_dirs[0], memo=False)
    assert m.device_map == "" and "device_map" not in m.describe()
    # The automatic batch size reads a LoadedModel's dimensions (tests/test_devices.py).
    assert RowShape.of(m) == RowShape(n_layers=2, d_model=32, d_mlp=96, n_heads=4, kv_width=32,
                                      d_vocab=m.d_vocab, dtype_bytes=4)


# --------------------------------------------------------------------------------------------
# Options and checks (no model work)


def test_config_reads_device_map():
    assert ClaimsConfig().device_map == ""
    assert build_config({"device_map": "auto"}).device_map == "auto"
    cfg = build_config({"device_map": '{"transformer.h.1": 1, "transformer.h.0": 0}'})
    assert cfg.device_map == '{"transformer.h.0": 0, "transformer.h.1": 1}'  # canonical JSON


def test_config_reads_a_toml_table(tmp_path):
    f = tmp_path / "claims.toml"
    f.write_text('[tool.mechclaims.device_map]\n"transformer.h.0" = 0\nlm_head = "cuda:1"\n')
    assert build_config({}, claims_config=str(f)).device_map == '{"lm_head": "cuda:1", "transformer.h.0": 0}'


@pytest.mark.parametrize("bad", ["everywhere", "{not json", "[1, 2]", '{"lm_head": "gpu"}', '{"lm_head": -1}',
                                 '{"lm_head": true}', "{}"])
def test_bad_device_maps_are_refused(bad):
    with pytest.raises(ConfigError, match="device_map"):
        build_config({"device_map": bad})


def test_parse_device_map():
    assert parse_device_map(None) is None and parse_device_map("  ") is None
    assert parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map({"a": 0, "b": "cuda:1", "c": "cpu", "d": "disk"}) == {"a": 0, "b": "cuda:1",
                                                                                 "c": "cpu", "d": "disk"}


@pytest.mark.parametrize("kind", ["organism", "weights", "adapter"])
def test_device_map_only_for_directories_and_hub_ids(kind, tmp_path):
    base = Source("dir", str(tmp_path))
    src = Source(kind, "gpt2" if kind == "organism" else str(tmp_path / "w.pt"),
                 base=None if kind == "organism" else base)
    with pytest.raises(ModelSourceError, match="device map applies to HF directories"):
        _placement_kwargs(src, "auto", None, None)
    with pytest.raises(ConfigError, match="--device-map"):
        check_device_map("auto", base, src)
    check_device_map("", base, src)  # no map: nothing to check
    check_device_map("auto", base, Source("hub", "gpt2"))


def test_placement_options_need_a_map():
    with pytest.raises(ModelSourceError, match="only apply with a device_map"):
        _placement_kwargs(Source("hub", "gpt2"), None, {"cpu": "1GB"}, None)
    assert _placement_kwargs(Source("hub", "gpt2"), None, None, None) == {}
    assert _placement_kwargs(Source("hub", "gpt2"), "auto", {0: "10GiB"}, None) == {
        "device_map": "auto", "max_memory": {0: "10GiB"}}


def test_pytest_option_is_declared():
    from mechclaims.options import OPTIONS as _OPTIONS

    assert ("--device-map", "device_map") in {(flag, dest) for flag, dest, _ in _OPTIONS}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_weight_terms_of_an_offloaded_block(arch, tmp_path, probe):
    """Conv1D (GPT-2, ``[in, out]``) and Linear (``[out, in]``) output projections read while
    offloaded to disk give the weight terms of the model loaded whole, bit for bit."""
    from mechclaims.attribution import WeightTerms, weight_terms

    tok = tiny.make_tokenizer(tmp_path / "tok")
    dirs = [str(d) for d in tiny.make_pair(tmp_path / arch, arch, tok)]
    plain = weight_terms(*load_pair(*dirs), probe)
    names = {"gpt2": "transformer.h.1", "llama": "model.layers.1"}[arch]
    split = {m: "cpu" for m in _top_modules(dirs[0])}
    split[names] = "disk"
    base, model = load_pair(*dirs, device_map=split, offload_folder=str(tmp_path / "off"))
    from mechclaims.loading import is_offloaded

    assert is_offloaded(base.stat_modules[1][1]) and not is_offloaded(base.stat_modules[0][1])
    got = weight_terms(base, model, probe)
    for name in WeightTerms.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(got, name), getattr(plain, name), err_msg=name)


def _top_modules(directory: str) -> list[str]:
    """The modules a device map must name for a tiny model: embeddings, each block, the rest."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(directory)
    if cfg.model_type == "gpt2":
        return ["transformer.wte", "transformer.wpe", *(f"transformer.h.{i}" for i in range(cfg.n_layer)),
                "transformer.ln_f", "lm_head"]
    return ["model.embed_tokens", *(f"model.layers.{i}" for i in range(cfg.num_hidden_layers)), "model.norm",
            "model.rotary_emb", "lm_head"]


def test_a_map_mixing_a_gpu_with_cpu_is_refused_before_loading(tmp_path):
    """TransformerLens 4.x refuses such a map after the weights are loaded (seen on an H200,
    benchmarks/results/h200-device-map-v4.json); mechclaims says so before loading any."""
    from mechclaims.devices import mixes_gpu_and_offload

    src = Source("dir", str(tmp_path), sha256="0" * 64)
    mixed = '{"transformer.h.0": 0, "transformer.h.1": "cpu"}'
    with pytest.raises(ConfigError, match="mixes a GPU with CPU/disk offload"):
        check_device_map(mixed, src)
    assert mixes_gpu_and_offload({"a": "cuda:1", "b": "disk"})
    assert not mixes_gpu_and_offload({"a": 0, "b": "cuda:1"}) and not mixes_gpu_and_offload(ALL_CPU)
    assert not mixes_gpu_and_offload(DISK_H1) and not mixes_gpu_and_offload("auto")
    all_gpus = '{"transformer.h.0": 0, "transformer.h.1": "cuda:1"}'
    if torch.cuda.device_count() >= 2:
        check_device_map(all_gpus, src)  # all GPUs: fine where they exist
    else:
        with pytest.raises(ConfigError, match="CUDA device"):  # refused on a machine without them
            check_device_map(all_gpus, src)
