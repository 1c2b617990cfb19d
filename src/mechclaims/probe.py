"""A probe: a direction in ``d_model`` with metadata (where it was read, how it was trained).

Only its direction matters downstream: projections use ``w / ||w||`` and alignments use cosine
similarity, so the scale is irrelevant. Files are read without pickle: ``.safetensors``,
``.npy`` (``allow_pickle=False``) or ``.pt`` (``torch.load(weights_only=True)``).

``train_probe`` follows Yang et al. v3 (``toxic_probe.py``): logistic regression (sklearn
defaults, intercept dropped) on the final residual stream after the final norm, mean-pooled
over the sequence. One deliberate difference: we pool over **non-pad tokens only**; the
paper's script pooled over all 128 left-padded positions, which mixes the pad token's state
into every feature in proportion to the text's shortness (paper ambiguity A2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ProbeError

FEATURE_HOOK = "ln_final.hook_normalized"


@dataclass
class Probe:
    direction: "object"  # torch.Tensor, float64, [d_model]
    metadata: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    def unit(self):
        """``w / ||w||`` in float64."""
        return self.direction / self.direction.norm()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.direction.double().cpu().numpy().tobytes()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write ``.safetensors`` (key ``direction``; metadata as JSON), atomically. The ``path``
        a probe was loaded from is not written: the file's bytes must not depend on where it lay."""
        from .cache import save_arrays

        meta = {k: v for k, v in self.metadata.items() if k != "path"}
        save_arrays(path, {"direction": self.direction.double().cpu().numpy()}, meta)


def load_probe(path: str | Path, d_model: int | None = None) -> Probe:
    """Load a probe from ``.safetensors``, ``.npy`` or ``.pt`` and check shape and finiteness.

    Accepted contents: a vector ``[d]``; a ``[1, d]`` / ``[d, 1]`` matrix; a 2-class linear
    layer ``[2, d]`` (its direction is row 1 - row 0, the toxic-minus-clean logit difference);
    or a dict holding one of those under ``direction``/``probe``/``weight``/``coef``.
    """
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise ProbeError(f"probe file {str(path)!r} {'is a directory' if p.is_dir() else 'does not exist'} (looked "
                         f"at {p.resolve()}); expected a .safetensors, .npy or .pt probe file.")
    suffix = p.suffix.lower()
    meta: dict = {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("mechclaims", "{}"))
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a ProbeError
            raise ProbeError(f"{p}: not a readable .safetensors file ({type(exc).__name__}: {exc}).") from exc
        obj = arrays.get("direction", next(iter(arrays.values()), None) if len(arrays) == 1 else None)
        if obj is None:
            raise ProbeError(f"{p}: expected a tensor named 'direction' (or a single tensor); "
                             f"found {sorted(arrays)}.")
        vec = obj
    elif suffix == ".npy":
        vec = torch.from_numpy(_read_npy(p))
    elif suffix in (".pt", ".pth"):
        from .loading import safe_torch_load

        obj = safe_torch_load(p, error=ProbeError)
        vec = _pick_vector(obj, p)
        meta = {"source_format": "pt"}
    else:
        raise ProbeError(f"{p}: unknown probe format {suffix!r}; use .safetensors, .npy or .pt.")
    vec = _to_direction(vec, p, meta)
    if d_model is not None and vec.shape[0] != d_model:
        raise ProbeError(
            f"{p}: the probe has width {vec.shape[0]} but the model's d_model is {d_model}. "
            "A probe is read from one model's residual stream; train or pick one for this model."
        )
    meta.setdefault("path", str(p.resolve()))
    return Probe(vec, meta)


_PROBE_SHAPES = "(d_model,), (1, d_model), (d_model, 1) or (2, d_model) for a 2-class linear layer"


def _read_npy(p: Path):
    """A numeric ``.npy`` array, read without pickle; ProbeError names what was found."""
    import numpy as np

    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise ProbeError(f"{p}: not a .npy file (it does not start with the .npy magic bytes; got "
                         f"{magic!r}); expected a float array of shape {_PROBE_SHAPES} written "
                         "by np.save.")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle; also malformed headers
        raise ProbeError(
            f"{p}: not a plain numeric .npy array ({exc}); expected a float array of shape "
            f"{_PROBE_SHAPES}. Save it with np.save(path, vec.astype(np.float32))."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or not .npy at all
        raise ProbeError(f"{p}: not a readable .npy file ({type(exc).__name__}: {exc}); expected "
                         f"a float array of shape {_PROBE_SHAPES} written by np.save.") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        found = f"dtype {arr.dtype}, shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ProbeError(f"{p}: got a .npy array of {found}; expected a numeric (float or int) "
                         f"array of shape {_PROBE_SHAPES}. Save the probe's weights, not labels "
                         "or text.")
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)  # torch needs native byte order


def _pick_vector(obj, p: Path):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        for key in ("direction", "probe", "weight", "coef", "coef_"):
            if isinstance(obj.get(key), torch.Tensor):
                return obj[key]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise ProbeError(f"{p}: expected a tensor or a dict with a 'direction' tensor; found {type(obj).__name__}.")


def _to_direction(vec, p: Path, meta: dict):
    import torch

    found = f"shape {tuple(vec.shape)}, dtype {str(vec.dtype).removeprefix('torch.')}"
    if vec.numel() == 0:
        raise ProbeError(f"{p}: got an empty probe ({found}); expected {_PROBE_SHAPES}. "
                         "The file holds no weights: re-export the trained probe.")
    vec = vec.detach().to(torch.float64)
    if vec.ndim == 2 and 1 in vec.shape:
        vec = vec.reshape(-1)
    elif vec.ndim == 2 and vec.shape[0] == 2:
        vec = vec[1] - vec[0]
        meta["from_two_class_linear"] = "direction = row 1 - row 0"
    if vec.ndim != 1:
        raise ProbeError(f"{p}: a probe must be one vector; got {found}; expected {_PROBE_SHAPES}. "
                         "Save the probe's direction alone.")
    if not torch.isfinite(vec).all():
        bad = int((~torch.isfinite(vec)).sum())
        raise ProbeError(f"{p}: the probe has {bad} non-finite entries (NaN or inf); it is unusable.")
    if float(vec.norm()) == 0.0:
        raise ProbeError(f"{p}: the probe is the zero vector; it has no direction.")
    return vec


def pooled_features(model, texts: list[str], *, batch_size: int = 32, max_length: int = 64):
    """Mean over non-pad tokens of the final residual stream after the final norm.

    Returns a float64 numpy array ``[len(texts), d_model]``. Texts get BOS as the bridge adds it
    and right padding (causal attention: real tokens never see the pads on their right).
    """
    import numpy as np
    import torch

    from .prompts import encode_prompts

    bridge, tok = model.bridge, model.tokenizer
    seqs = encode_prompts(tok, texts, max_prompt_tokens=max_length,
                          prepend_bos=bool(bridge.cfg.default_prepend_bos))
    feats = []
    store = {}

    def grab(act, hook):
        store["x"] = act
        return act

    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(map(len, chunk))
        toks = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, s in enumerate(chunk):
            toks[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        toks, mask = toks.to(model.device), mask.to(model.device)
        with torch.no_grad(), bridge.hooks(fwd_hooks=[(FEATURE_HOOK, grab)]):
            bridge(toks, attention_mask=mask, return_type=None)
        x = store["x"].to(torch.float64)
        m = mask.to(torch.float64)[..., None]
        feats.append(((x * m).sum(1) / m.sum(1)).cpu().numpy())
    return np.concatenate(feats)


def train_probe(model, texts: list[str], labels: list[int], *, test_size: float = 0.2,
                seed: int = 0, batch_size: int = 32, max_length: int = 64, C: float = 1.0,
                max_iter: int = 1000) -> Probe:
    """Train a toxic/clean logistic-regression probe on ``model`` (a LoadedModel).

    ``labels``: 1 = toxic, 0 = clean. Held-out accuracy on a stratified ``test_size`` split is
    reported in ``probe.metadata["heldout_accuracy"]``. The direction is ``coef_`` (toxic is
    positive); the intercept is dropped, as in the paper.
    """
    import numpy as np
    import sklearn
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if len(texts) != len(labels):
        raise ProbeError(f"got {len(texts)} texts but {len(labels)} labels; they must pair up.")
    y = np.asarray(labels, dtype=int)
    if set(np.unique(y)) != {0, 1}:
        raise ProbeError(f"labels must contain both 0 (clean) and 1 (toxic); got {sorted(set(y.tolist()))}.")
    X = pooled_features(model, texts, batch_size=batch_size, max_length=max_length)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(Xtr, ytr)
    acc = float(clf.score(Xte, yte))
    meta = {
        "read_at": FEATURE_HOOK,
        "pooling": "mean over non-pad tokens (BOS included); paper pooled over pads too (A2)",
        "classifier": f"sklearn LogisticRegression(C={C}, max_iter={max_iter}), intercept dropped",
        "sklearn_version": sklearn.__version__,
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "heldout_accuracy": acc,
        # Kept so the probe can score as a probability (scoring.CalibratedProbeScorer); the
        # direction itself is coef_ with the intercept dropped, as in the paper.
        "intercept": float(clf.intercept_[0]),
        "seed": seed,
        "max_length": max_length,
        "model_source": getattr(model, "source", None),
        # The content hash of the model's files (the same however the model is named: organism
        # or directory); C24 fails when a run's base has another one.
        "model_sha256": getattr(model, "sha256", None),
    }
    return Probe(torch.from_numpy(clf.coef_[0].astype(np.float64)), meta)


#: Default columns of labelled data, first present wins (Jigsaw's train.csv: comment_text, toxic).
TEXT_COLUMNS = ("text", "comment_text", "prompt")
LABEL_COLUMNS = ("label", "toxic", "is_toxic")
MIN_LABELLED_ROWS = 10
_LABEL_WORDS = {"0": 0, "1": 1, "false": 0, "true": 1}


def read_labelled(path: str | Path, text_column: str | None = None,
                  label_column: str | None = None) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels (1 = toxic) from a ``.jsonl`` (one object per line) or ``.csv``
    (header row) file. Default columns: the first of ``TEXT_COLUMNS`` / ``LABEL_COLUMNS``
    present, so Jigsaw's ``train.csv`` (``comment_text``, ``toxic``) works as is. Labels may be
    0/1, "0"/"1", true/false or 0.0/1.0; anything else is a ProbeError naming file:line."""
    import csv

    p = Path(path).expanduser()
    if not p.is_file():
        raise ProbeError(f"got data file {str(path)!r}, which {'is a directory' if p.is_dir() else 'does not exist'} "
                         f"(looked at {p.resolve()}); "
                         "expected a .jsonl or .csv file of labelled texts; check the path.")
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ProbeError(f"{p}: got a {suffix or 'suffix-less'} file; expected .jsonl (one JSON object "
                         "per line) or .csv (with a header row); convert it or rename it.")
    rows: list[tuple[int, dict]] = []  # (line number, record)
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                start = 2
                for rec in reader:
                    rows.append((start, rec))
                    start = reader.line_num + 1
            else:
                columns = []
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ProbeError(f"{p}:{i}: got a line that is not JSON ({exc.msg}); expected "
                                         "one JSON object per line; fix or remove the line.") from None
                    if not isinstance(rec, dict):
                        raise ProbeError(f"{p}:{i}: got a JSON {type(rec).__name__}; expected an object "
                                         'such as {"text": "...", "label": 1}; fix the line.')
                    columns += [k for k in rec if k not in columns]
                    rows.append((i, rec))
    except UnicodeDecodeError as exc:
        raise ProbeError(f"{p}: got bytes that are not UTF-8 ({exc.reason} at byte {exc.start}); expected "
                         "a UTF-8 text file; re-save it as UTF-8.") from None
    except csv.Error as exc:
        raise ProbeError(f"{p}: got malformed CSV ({exc}); expected a header row and one row per "
                         "text; fix the file.") from None
    text_col = _pick_column(p, columns, text_column, TEXT_COLUMNS, "text", "--text-column")
    label_col = _pick_column(p, columns, label_column, LABEL_COLUMNS, "label", "--label-column")
    texts, labels = [], []
    for line, rec in rows:
        text, raw = rec.get(text_col), rec.get(label_col)
        if not isinstance(text, str) or not text.strip():
            raise ProbeError(f"{p}:{line}: got {text!r} in text column {text_col!r}; expected a "
                             "non-empty string; fix or remove the row.")
        texts.append(text)
        labels.append(_parse_label(raw, f"{p}:{line}", label_col))
    n = len(labels)
    if n < MIN_LABELLED_ROWS:
        raise ProbeError(f"{p}: got {n} labelled row(s); expected at least {MIN_LABELLED_ROWS} "
                         "(a probe is fitted on some and scored on the rest); add rows.")
    counts = {c: labels.count(c) for c in (0, 1)}
    if min(counts.values()) < 2:
        raise ProbeError(f"{p}: got {counts[0]} clean (0) and {counts[1]} toxic (1) rows in column "
                         f"{label_col!r}; expected at least 2 of each class; add rows of the missing "
                         "class or pick the right --label-column.")
    return texts, labels


def _pick_column(p: Path, columns: list, given: str | None, defaults: tuple, what: str, opt: str) -> str:
    if given is not None:
        if given in columns:
            return given
        raise ProbeError(f"{p}: got {opt} {given!r}, which is not a column; the columns found are "
                         f"{columns}; pass one of them as {opt}.")
    for c in defaults:
        if c in columns:
            return c
    raise ProbeError(f"{p}: got no {what} column (looked for {', '.join(defaults)}); the columns found "
                     f"are {columns}; pass the right one as {opt}.")


def _parse_label(raw, where: str, column: str) -> int:
    import math

    value = None
    if isinstance(raw, bool):
        value = int(raw)
    elif isinstance(raw, (int, float)):
        value = int(raw) if math.isfinite(raw) and raw in (0, 1) else None
    elif isinstance(raw, str):
        s = raw.strip().lower()
        value = _LABEL_WORDS.get(s)
        if value is None:
            try:
                f = float(s)
                value = int(f) if f in (0.0, 1.0) else None
            except ValueError:
                pass
    if value is None:
        raise ProbeError(f"{where}: got label {raw!r} in column {column!r}; expected 0 (clean) or 1 "
                         '(toxic) (also "0"/"1", true/false, 0.0/1.0); fix the row or pick another '
                         "--label-column.")
    return value


def probe_summary(probe: Probe) -> dict:
    return {"sha256": probe.sha256, "d_model": probe.d_model,
            "metadata": json.loads(json.dumps(probe.metadata, default=str))}
