"""Probes: loading every accepted file form, refusing unusable ones, and training on a real model."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from mechclaims.errors import MechclaimsError, ProbeError, UnsafeCheckpoint
from mechclaims.probe import FEATURE_HOOK, Probe, load_probe, pooled_features, train_probe

D = 32


def _vec(seed=0, d=D):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Loading


def test_safetensors_round_trip_keeps_direction_and_metadata(tmp_path):
    meta = {"read_at": FEATURE_HOOK, "heldout_accuracy": 0.8125, "n_train": 96, "note": "ünïcödé",
            "nested": {"a": [1, 2, 3]}, "none": None}
    p = Probe(_vec(1), dict(meta))
    f = tmp_path / "probe.safetensors"
    p.save(f)
    q = load_probe(f, d_model=D)
    assert q.direction.dtype == torch.float64
    assert torch.equal(q.direction, p.direction)
    assert q.sha256 == p.sha256
    for k, v in meta.items():
        assert q.metadata[k] == v
    assert q.d_model == D
    torch.testing.assert_close(q.unit().norm(), torch.tensor(1.0, dtype=torch.float64))


def test_safetensors_single_tensor_under_another_name(tmp_path):
    from safetensors.numpy import save_file

    v = _vec(2).numpy()
    save_file({"w": v}, str(tmp_path / "one.safetensors"))
    assert np.array_equal(load_probe(tmp_path / "one.safetensors").direction.numpy(), v)
    save_file({"a": v, "b": v}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ProbeError, match="direction"):
        load_probe(tmp_path / "two.safetensors")


def test_safetensors_written_by_torch_in_bfloat16(tmp_path):
    """A probe saved from a bf16 model with safetensors.torch is a usable probe file."""
    from safetensors.torch import save_file

    v = _vec(3).to(torch.bfloat16)
    f = tmp_path / "bf16.safetensors"
    save_file({"direction": v}, str(f))
    q = load_probe(f, d_model=D)
    assert torch.equal(q.direction, v.to(torch.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_npy(dtype, tmp_path):
    v = (_vec(4).numpy() * 10).astype(dtype)
    f = tmp_path / "probe.npy"
    np.save(f, v)
    q = load_probe(f, d_model=D)
    assert q.direction.dtype == torch.float64
    assert np.array_equal(q.direction.numpy(), v.astype(np.float64))


def test_npy_object_array_is_refused(tmp_path):
    f = tmp_path / "obj.npy"
    np.save(f, np.array([1.0, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(ProbeError, match="obj.npy"):
        load_probe(f)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_npy_object_array_with_a_payload_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil(marker)
    np.save(f, arr, allow_pickle=True)
    with pytest.raises(ProbeError):
        load_probe(f)
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, want",
    [
        (lambda v: v.clone(), lambda v: v),
        (lambda v: v.float(), lambda v: v.float().double()),
        (lambda v: {"direction": v.clone(), "step": 3}, lambda v: v),
        (lambda v: {"probe": v.clone(), "bias": torch.zeros(1)}, lambda v: v),
        (lambda v: {"only": v.clone()}, lambda v: v),
        (lambda v: v[None, :].clone(), lambda v: v),
        (lambda v: v[:, None].clone(), lambda v: v),
        (lambda v: torch.stack([v * 0.5, v * 2.0 + 1.0]), lambda v: (v * 2.0 + 1.0) - v * 0.5),
    ],
    ids=["tensor", "float32", "dict-direction", "dict-probe", "dict-single", "1xd", "dx1", "2xd"],
)
def test_pt_forms(make, want, tmp_path):
    v = _vec(5)
    f = tmp_path / "probe.pt"
    torch.save(make(v), f)
    q = load_probe(f, d_model=D)
    assert q.direction.dtype == torch.float64 and tuple(q.direction.shape) == (D,)
    torch.testing.assert_close(q.direction, want(v), rtol=0, atol=1e-12)


def test_pt_two_class_linear_layer(tmp_path):
    """A saved nn.Linear(d, 2) classifier: toxic-minus-clean logit direction = row 1 - row 0."""
    lin = torch.nn.Linear(D, 2)
    f = tmp_path / "clf.pt"
    torch.save(lin.state_dict(), f)
    q = load_probe(f, d_model=D)
    W = lin.weight.detach().double()
    torch.testing.assert_close(q.direction, W[1] - W[0], rtol=0, atol=0)
    assert "row 1 - row 0" in q.metadata["from_two_class_linear"]


def _raises(f, d_model=None) -> str:
    with pytest.raises(ProbeError) as ei:
        load_probe(f, d_model=d_model)
    return str(ei.value)


def test_wrong_width(tmp_path):
    f = tmp_path / "wide.pt"
    torch.save(_vec(6, d=48), f)
    msg = _raises(f, d_model=D)
    assert "48" in msg and "32" in msg
    assert load_probe(f).d_model == 48  # without a model to check against it loads


@pytest.mark.parametrize(
    "bad, words",
    [
        ("nan", ("non-finite",)),
        ("inf", ("non-finite",)),
        ("-inf", ("non-finite",)),
        ("zero", ("zero",)),
        ("3d", ("(2, 4, 8)",)),
        ("dx3", ("(32, 3)",)),
        ("scalar", ("()",)),
    ],
)
@pytest.mark.parametrize("fmt", [".pt", ".npy", ".safetensors"])
def test_unusable_vectors(bad, words, fmt, tmp_path):
    v = _vec(7)
    if bad == "nan":
        v[3] = float("nan")
    elif bad == "inf":
        v[0] = float("inf")
    elif bad == "-inf":
        v[-1] = float("-inf")
    elif bad == "zero":
        v = torch.zeros(D, dtype=torch.float64)
    elif bad == "3d":
        v = torch.ones(2, 4, 8, dtype=torch.float64)
    elif bad == "dx3":
        v = torch.ones(D, 3, dtype=torch.float64)
    elif bad == "scalar":
        v = torch.tensor(1.5, dtype=torch.float64)
    f = tmp_path / f"bad{fmt}"
    if fmt == ".pt":
        torch.save(v, f)
    elif fmt == ".npy":
        np.save(f, v.numpy())
    else:
        from safetensors.numpy import save_file

        save_file({"direction": v.numpy()}, str(f))
    msg = _raises(f)
    assert str(f) in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("name", ["probe.txt", "probe.json", "probe.pkl", "probe"])
def test_unknown_suffix(name, tmp_path):
    f = tmp_path / name
    f.write_bytes(b"1 2 3")
    msg = _raises(f)
    assert "unknown probe format" in msg


def test_missing_file(tmp_path):
    f = tmp_path / "absent.safetensors"
    msg = _raises(f)
    assert str(f) in msg and "does not exist" in msg


def test_dict_without_a_vector(tmp_path):
    f = tmp_path / "empty.pt"
    torch.save({"a": torch.zeros(3), "b": torch.zeros(3), "c": 1}, f)
    _raises(f)


def test_corrupt_npy_and_pt_are_refused(tmp_path):
    for name in ("c.npy", "c.pt"):
        f = tmp_path / name
        f.write_bytes(b"\x00garbage" * 16)
        with pytest.raises(MechclaimsError):
            load_probe(f)


def test_corrupt_safetensors_is_a_probe_error(tmp_path):
    f = tmp_path / "c.safetensors"
    f.write_bytes(b"\x00garbage" * 16)
    msg = _raises(f)
    assert str(f) in msg


def test_pt_with_code_is_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "probe.pt"
    torch.save({"direction": _Evil(marker)}, f)
    with pytest.raises(UnsafeCheckpoint):
        load_probe(f)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Training


SUBJECTS = ["you", "he", "she", "they", "your friend", "that guy", "my neighbour", "the teacher",
            "honestly you", "this person"]
TOXIC = ["is an idiot", "is so stupid", "should shut up", "is a stupid idiot, shut up",
         "is the dumbest idiot alive", "is stupid and should shut up now"]
CLEAN = ["is very kind", "walks in the park", "likes the nice weather", "is a good friend",
         "tells a story about a dragon", "passes the salt and the bread"]


def labelled_texts():
    texts, labels = [], []
    for s in SUBJECTS:
        for t in TOXIC:
            texts.append(f"{s} {t}")
            labels.append(1)
        for c in CLEAN:
            texts.append(f"{s} {c}")
            labels.append(0)
    return texts, labels


@pytest.fixture(scope="module")
def base(gpt2_pair):
    from mechclaims.loading import load_model

    return load_model(str(gpt2_pair[0]))


@pytest.fixture(scope="module")
def trained(base):
    texts, labels = labelled_texts()
    return train_probe(base, texts, labels, test_size=0.2, seed=0)


def test_train_probe_metadata(base, trained):
    texts, labels = labelled_texts()
    n = len(texts)
    assert n == 120 and sum(labels) == 60
    assert trained.d_model == base.d_model
    assert trained.direction.dtype == torch.float64 and torch.isfinite(trained.direction).all()
    m = trained.metadata
    assert m["read_at"] == "ln_final.hook_normalized"
    assert m["n_test"] == math.ceil(0.2 * n) and m["n_train"] == n - m["n_test"]
    acc = m["heldout_accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert abs(acc * m["n_test"] - round(acc * m["n_test"])) < 1e-9  # a fraction of the test set
    assert m["model_sha256"] == base.sha256
    assert m["seed"] == 0


def test_trained_direction_points_toxic(base, trained):
    """Toxic texts score higher along the direction than clean ones (toxic is positive)."""
    texts, labels = labelled_texts()
    X = pooled_features(base, texts)
    s = X @ trained.direction.numpy()
    y = np.asarray(labels)
    assert s[y == 1].mean() > s[y == 0].mean()


def test_trained_probe_saves_and_loads(trained, tmp_path):
    f = tmp_path / "trained.safetensors"
    trained.save(f)
    q = load_probe(f, d_model=trained.d_model)
    assert torch.equal(q.direction, trained.direction)
    assert q.metadata["heldout_accuracy"] == trained.metadata["heldout_accuracy"]


def test_pooled_features_equal_per_text_unpadded_means(base):
    """Batched, right-padded pooling = each text alone: mean of ln_final over its own tokens."""
    texts, _ = labelled_texts()
    texts = texts[::3] + ["go", "a much longer text about the cat that sat on the mat near the door "
                                "while the dragon told a story"]
    got = pooled_features(base, texts, batch_size=16)
    assert got.shape == (len(texts), base.d_model) and got.dtype == np.float64
    tok = base.tokenizer
    for i, text in enumerate(texts):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            _, cache = base.bridge.run_with_cache(torch.tensor([ids]),
                                                  names_filter=lambda n: n == FEATURE_HOOK)
        want = cache[FEATURE_HOOK][0].to(torch.float64).mean(0).numpy()
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5)


def test_train_probe_rejects_bad_labels(base):
    texts, labels = labelled_texts()
    with pytest.raises(ProbeError, match="labels"):
        train_probe(base, texts, labels[:-1])
    with pytest.raises(ProbeError, match="both"):
        train_probe(base, texts[:10], [1] * 10)
    with pytest.raises(ProbeError, match="both"):
        train_probe(base, texts[:10], [0] * 10)


def test_a_saved_probe_does_not_record_where_it_was_loaded_from(tmp_path):
    """Loading adds ``path`` to the metadata (for reports); saving drops it, so a re-saved
    probe's bytes do not depend on the directory it came from (the organisms' are committed)."""
    import torch

    from mechclaims.probe import Probe, load_probe

    Probe(torch.arange(1.0, 5.0, dtype=torch.float64), {"note": "x"}).save(tmp_path / "a.safetensors")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    for where in (tmp_path / "b.safetensors", tmp_path / "deep" / "er" / "c.safetensors"):
        loaded = load_probe(tmp_path / "a.safetensors")
        assert loaded.metadata["path"].endswith("a.safetensors")
        loaded.save(where)
        assert where.read_bytes() == (tmp_path / "a.safetensors").read_bytes()
