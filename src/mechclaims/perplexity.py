"""Perplexity of a LoadedModel on a text, the paper's way but with one fixed definition.

``perplexity(model, text)`` tokenises the whole text once (no truncation), prepends BOS once
at the very start when the model uses BOS (``bridge.cfg.default_prepend_bos``, as every other
mechclaims pass does), cuts the ids into **non-overlapping** windows of ``window`` tokens
(default ``min(model context, 1024)``), and runs each window as an independent sequence
(positions restart at 0; no context carried over). Within a window the labels are the inputs
shifted by one, so the first token of every window is *not* predicted: a window of ``n``
tokens contributes ``n - 1`` predicted tokens. Per-token NLLs are summed in float64 and

    nll = sum of per-token NLL / n_tokens          ppl = exp(nll)

where ``n_tokens`` is the number of predicted tokens (returned, always).

Differences from the paper's code (paper ambiguity A12):

- Lee et al. return ``exp(sum_windows meanCE * trg_len / end_loc)``: the divisor ``end_loc``
  counts every token, including the first token of each window, which is never predicted (an
  off-by-one per window that lowers the reported perplexity slightly). We divide by the
  number of predicted tokens.
- Yang et al. (HEAD) return the *log*-perplexity ``sum CE / sum trg_len`` without exponentiating.
  Our ``nll`` is that quantity; ``ppl`` is its exponential.
- Both tokenise WikiText-2-raw-v1 ``test`` joined with ``"\\n\\n"``; ``load_text`` does the same.
  GPT-2's HF tokenizer adds no BOS, so their GPT-2 stream has none, whereas the TransformerBridge
  convention (``default_prepend_bos``) puts one ``<|endoftext|>`` at the start: one extra
  predicted token in ~280k. Pass ``prepend_bos=False`` to reproduce theirs exactly.

The forward passes run on the plain HF module ``model.hf_model`` (plain transformers speed; it
shares its weights with the bridge). Windows of equal length are batched ``batch_size`` at a
time without padding, so every window is computed exactly as it would be alone.
Logits are upcast to at least float32 for the cross-entropy; sums are float64.

``hooks``: optional ``[(module_or_name, fn), ...]`` registered as PyTorch forward hooks on
``model.hf_model`` (a name is resolved with ``hf_model.get_submodule``) for the duration of the
call and always removed afterwards: the way to measure perplexity under an intervention
(patching, editing). ``fn(module, args, output)`` may return a replacement output. A hook sees
``[batch, window, ...]`` tensors for every position.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import PerplexityError

MAX_WINDOW = 1024


def default_ppl_text() -> str:
    """Path of the text perplexity is measured on when ``--ppl-text`` is not given for a model
    that is not an organism: ``mechclaims/data/fluency.txt``, about 3,000 words of plain English
    encyclopedic prose written for this project (CC0; see ``data/README.md``), so the fluency
    claim C2 is always checked. Shipped as package data, so it exists in a wheel too."""
    return str(Path(__file__).resolve().parent / "data" / "fluency.txt")


def model_context(model) -> int:
    """The model's maximum sequence length from its HF config (n_positions / max_position_embeddings)."""
    cfg = model.hf_model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return int(model.bridge.cfg.n_ctx)


#: What a perplexity depends on besides the model and the text (recorded in reports; a baseline
#: measured otherwise is refused). Bump ``method`` when the computation changes.
SETTINGS = {"method": "non-overlapping windows, exp(mean NLL of predicted tokens)", "window": "min(context, 1024)",
            "version": 1}


def load_text(source: str | Path) -> str:
    """The text to score: a file path (read as UTF-8), or a Hugging Face dataset spec
    ``NAME:CONFIG:SPLIT`` (e.g. ``wikitext:wikitext-2-raw-v1:test``; ``NAME:SPLIT`` without a
    config) loaded with ``datasets.load_dataset`` from the local cache only, whose ``text``
    column (or its only string column) is joined with ``"\\n\\n"`` as in Lee et al. / Yang et al.

    A dataset is never downloaded here: the ``datasets`` and ``huggingface_hub`` offline flags
    are switched on for the duration of the call.
    """
    p = Path(source).expanduser()
    if p.is_file():
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PerplexityError(
                f"text file {str(p)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "re-encode it as UTF-8."
            ) from exc
    if p.is_dir():
        raise PerplexityError(
            f"{str(source)!r} is a directory; expected a UTF-8 text file or a dataset spec "
            "NAME:CONFIG:SPLIT such as wikitext:wikitext-2-raw-v1:test."
        )
    s = str(source)
    parts = s.split(":")
    if len(parts) not in (2, 3) or not all(parts) or os.sep in s:
        raise PerplexityError(
            f"text source {s!r} is neither an existing file (looked at {p.resolve()}) nor a "
            "dataset spec NAME:CONFIG:SPLIT (e.g. wikitext:wikitext-2-raw-v1:test). Pass the "
            "path of a text file, or such a spec for a dataset in your local HF cache."
        )
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    return _load_dataset_text(s, name, config, split)


def _load_dataset_text(spec: str, name: str, config: str | None, split: str) -> str:
    try:
        import datasets
    except ImportError as exc:
        raise PerplexityError(
            f"dataset spec {spec!r} needs the `datasets` package, which is not installed. "
            "Install it (pip install datasets) or pass the path of a text file instead."
        ) from exc
    from huggingface_hub import constants as hub_constants

    # Offline for this call only: both libraries read their offline flags at import time, so
    # the module attributes are set (and restored), not just the environment.
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (hub_constants, "HF_HUB_OFFLINE")]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in flags if hasattr(obj, attr)]
    for obj, attr, _ in saved:
        setattr(obj, attr, True)
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not cached"
        raise PerplexityError(
            f"could not load dataset {spec!r} (name={name!r}, config={config!r}, split={split!r}) "
            f"from the local cache ({type(exc).__name__}: {str(exc)[:300]}). mechclaims never "
            "downloads it; while online run `python -c \"import datasets; datasets.load_dataset("
            f"{name!r}, {config!r}, split={split!r})\"` to cache it, or save the text to a file "
            "and pass its path."
        ) from exc
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
    cols = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    col = "text" if "text" in ds.column_names else (cols[0] if len(cols) == 1 else None)
    if col is None:
        raise PerplexityError(
            f"dataset {spec!r} has no 'text' column and not exactly one string column "
            f"(columns: {ds.column_names}); save the text you want to a file and pass its path."
        )
    return "\n\n".join(ds[col])


def window_bounds(n_ids: int, window: int) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` windows covering ``n_ids`` ids; a trailing window of a
    single id (nothing to predict) is dropped."""
    out = [(s, min(s + window, n_ids)) for s in range(0, n_ids, window)]
    return [(s, e) for s, e in out if e - s >= 2]


def perplexity(model, text: str | Path, *, window: int | None = None, batch_size: int = 8,
               hooks=None, prepend_bos: bool | None = None, split_across_ranks: bool = False) -> dict:
    """exp(mean NLL) of ``model`` (a LoadedModel) over ``text``, in non-overlapping windows.

    ``text``: the text itself (``str``) or a ``Path`` to a UTF-8 file (use ``load_text`` for a
    path given as a string or a dataset spec). ``window``: tokens per window, default
    ``min(model context, 1024)``; at most the model context. ``prepend_bos``: default the
    model's convention (``bridge.cfg.default_prepend_bos`` and a BOS token exists).
    ``split_across_ranks``: under torchrun (``mechclaims.distributed``) each rank reads its
    share of the window batches and every rank gets the same result, bit for bit (every rank
    must call it).

    Returns ``{"ppl", "nll", "n_tokens", "n_windows", "window", "bos", "n_ids",
    "window_bounds"}``: ``nll`` is the mean NLL (nats) per predicted token, ``n_tokens`` the
    number of predicted tokens (= sum over windows of (length - 1)), ``n_ids`` the length of
    the tokenised stream (BOS included), ``window_bounds`` the ``[start, end)`` of each window
    in that stream.
    """
    import torch

    if isinstance(text, Path):
        text = load_text(text)
    if not isinstance(text, str):
        raise PerplexityError(f"text must be a str or a pathlib.Path, got {type(text).__name__}.")
    if not text.strip():
        raise PerplexityError(
            f"the text is empty ({len(text)} characters, whitespace only); perplexity needs at "
            "least two tokens. Check the file or dataset split you loaded."
        )
    ctx = model_context(model)
    if window is None:
        window = min(ctx, MAX_WINDOW)
    if not isinstance(window, int) or isinstance(window, bool) or window < 2 or window > ctx:
        raise PerplexityError(
            f"window must be an integer in [2, {ctx}] (the model context), got {window!r}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PerplexityError(f"batch_size must be a positive integer, got {batch_size!r}.")
    tok = model.tokenizer
    if prepend_bos is None:
        prepend_bos = bool(getattr(model.bridge.cfg, "default_prepend_bos", False))
    bos = tok.bos_token_id if prepend_bos else None
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    if bos is not None:
        ids = [bos] + list(ids)
    if len(ids) < 2:
        raise PerplexityError(
            f"the text {text[:40]!r} encodes to {len(ids)} token(s) (BOS included); perplexity "
            "needs at least two."
        )
    bounds = window_bounds(len(ids), window)
    hf = model.hf_model
    device = next(hf.parameters()).device
    all_ids = torch.tensor(ids, dtype=torch.long)
    by_len: dict[int, list[tuple[int, int]]] = {}
    for s, e in bounds:
        by_len.setdefault(e - s, []).append((s, e))
    batches = [group[j:j + batch_size] for group in by_len.values() for j in range(0, len(group), batch_size)]
    n_tokens = sum(len(b) * (b[0][1] - b[0][0] - 1) for b in batches)
    if split_across_ranks:  # data parallel: this rank's batches; the sums are added in batch order
        from .distributed import gather_in_order, world

        mine = world().mine(len(batches))
    else:
        mine = range(len(batches))
    local = []
    handles = []
    try:
        for target, fn in (hooks or ()):
            mod = hf.get_submodule(target) if isinstance(target, str) else target
            handles.append(mod.register_forward_hook(fn))
        with torch.no_grad():
            for b in mine:
                rows = torch.stack([all_ids[s:e] for s, e in batches[b]]).to(device)
                logits = hf(input_ids=rows, use_cache=False).logits
                if logits.dtype not in (torch.float32, torch.float64):
                    logits = logits.float()
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="none")
                local.append((b, float(nll.to(torch.float64).sum())))
    finally:
        for h in handles:
            h.remove()
    total = 0.0  # float64, batch by batch in batch order: the same sum whatever the number of ranks
    for _, part in (gather_in_order(local) if split_across_ranks else local):
        total += part
    mean = float(total) / n_tokens
    if not math.isfinite(mean):
        from .errors import NumericalError

        raise NumericalError(
            f"the mean NLL over {n_tokens} tokens is {mean}; the model produced non-finite "
            "logits (try --dtype float32 if you used a 16-bit dtype)."
        )
    return {
        "ppl": math.exp(mean),
        "nll": mean,
        "n_tokens": n_tokens,
        "n_windows": len(bounds),
        "window": window,
        "bos": bos is not None,
        "n_ids": len(ids),
        "window_bounds": bounds,
    }
