"""One KV-cached greedy pass that streams per-neuron float64 sums.

For each prompt the model generates ``max_new_tokens`` (T, default 20) tokens greedily and
never stops early. The statistics are read at the positions whose outputs produce the
generated tokens: the last prompt position and every generated position but the last (T
positions for T tokens; the paper's GPT-2 path, 1(b)). Hooks on ``blocks.{l}.mlp.hook_post``
add, in float64, each neuron's activation at those positions while the generation runs, so
no second forward over the sequence is needed. Left padding means the positions read are
never pads.

Two position modes (paper A3):

``own``     each model on its own greedy continuation (Yang et al.; the paper's numbers).
``shared``  both models on one token sequence, the candidate (DPO) model's greedy
            continuation; the base reads it in one teacher-forced forward (Lee et al.).
            It removes the confound that the two models saw different tokens.

Besides the per-neuron sums, each layer's mean projection onto the probe of the MLP output
(``blocks.{l}.mlp.out.hook_out`` = ``hook_post @ W_out + b_out``) and of the residual stream
after the block (``blocks.{l}.hook_resid_post``) is accumulated at the same positions.

Prompts are cut into K contiguous chunks (K = min(32, n_prompts) by default) and every sum
is kept per chunk: memory is O(K * n_neurons), independent of the number of prompts, the
chunks are the resampling units of the bootstrap, and each finished chunk is cached on disk
so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from .errors import MechclaimsError, NumericalError
from .prompts import TokenBatch, encode_prompts, pad_left, prompts_sha256

STATS_VERSION = 1
POSITION_MODES = ("own", "shared")
MLP_OUT_HOOK = "blocks.{l}.mlp.out.hook_out"  # pre any post-MLP norm (Gemma-2), includes b_out
POSITIONS_READ = "last prompt position + generated positions 1..T-1 (T per prompt)"


@dataclass(frozen=True)
class StatsSettings:
    """Every setting that changes the statistics (batch size does not)."""

    positions: str = "own"
    max_new_tokens: int = 20
    max_prompt_tokens: int = 32
    max_chunks: int = 32
    batch_size: int = 32

    def __post_init__(self):
        if self.positions not in POSITION_MODES:
            raise MechclaimsError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}.")
        for name in ("max_new_tokens", "max_prompt_tokens", "max_chunks", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise MechclaimsError(f"{name} must be >= 1, got {getattr(self, name)!r}.")

    def key(self) -> dict:
        d = asdict(self)
        d.pop("batch_size")
        return d


@dataclass
class ModelStats:
    """Per-chunk sums for one model. Shapes: K chunks, L layers."""

    act_sum: np.ndarray            # [K, L, d_mlp] float64: sum of hook_post at the positions
    count: np.ndarray              # [K] float64: number of positions summed
    mlp_out_proj_sum: np.ndarray   # [K, L] float64: sum of (MLP output . w_hat)
    resid_post_proj_sum: np.ndarray  # [K, L] float64: sum of (resid_post . w_hat)
    continuations: np.ndarray      # [n_prompts, T] int64: the tokens this model generated
                                   # (shared mode, base: the candidate's tokens it read)

    def _w(self, weights):
        return np.ones(self.count.shape[0]) if weights is None else np.asarray(weights, np.float64)

    def mean_act(self, weights=None) -> np.ndarray:
        """Mean activation per neuron ``[L, d_mlp]``; ``weights`` reweights chunks (bootstrap)."""
        w = self._w(weights)
        return np.tensordot(w, self.act_sum, axes=1) / (w @ self.count)

    def mean_mlp_out_proj(self, weights=None) -> np.ndarray:
        w = self._w(weights)
        return (w @ self.mlp_out_proj_sum) / (w @ self.count)

    def mean_resid_post_proj(self, weights=None) -> np.ndarray:
        w = self._w(weights)
        return (w @ self.resid_post_proj_sum) / (w @ self.count)


@dataclass
class PairStats:
    base: ModelStats
    model: ModelStats
    settings: StatsSettings
    chunks: list[tuple[int, int]]
    provenance: dict = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)


# --------------------------------------------------------------------------------------------
# Accumulation hooks


class _Accumulator:
    """float64 sums on the model's device, filled by hooks at the positions in ``self.sel``."""

    def __init__(self, n_layers: int, d_mlp: int, w_hat, device):
        import torch

        self.act = torch.zeros(n_layers, d_mlp, dtype=torch.float64, device=device)
        self.mlp_proj = torch.zeros(n_layers, dtype=torch.float64, device=device)
        self.resid_proj = torch.zeros(n_layers, dtype=torch.float64, device=device)
        self.count = 0
        self.w_hat = w_hat.to(device=device, dtype=torch.float64)
        self.sel = slice(-1, None)
        self.n_layers = n_layers

    def hooks(self):
        hooks = []
        for layer in range(self.n_layers):
            hooks.append((f"blocks.{layer}.mlp.hook_post", partial(self._post, layer)))
            hooks.append((MLP_OUT_HOOK.format(l=layer), partial(self._mlp_out, layer)))
            hooks.append((f"blocks.{layer}.hook_resid_post", partial(self._resid, layer)))
        return hooks

    def _post(self, layer, act, hook):
        import torch

        self.act[layer] += act[:, self.sel].sum(dim=(0, 1), dtype=torch.float64)
        return act

    def _mlp_out(self, layer, out, hook):
        import torch

        self.mlp_proj[layer] += (out[:, self.sel].to(torch.float64) @ self.w_hat).sum()
        return out

    def _resid(self, layer, resid, hook):
        import torch

        self.resid_proj[layer] += (resid[:, self.sel].to(torch.float64) @ self.w_hat).sum()
        return resid

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {
            "act_sum": self.act.cpu().numpy(),
            "count": np.array(float(self.count)),
            "mlp_out_proj_sum": self.mlp_proj.cpu().numpy(),
            "resid_post_proj_sum": self.resid_proj.cpu().numpy(),
        }


def greedy_generate(bridge, batch: TokenBatch, max_new_tokens: int, acc: _Accumulator | None = None):
    """Greedy KV-cached generation of exactly ``max_new_tokens`` tokens (no early stop).

    With ``acc``, its hooks read position -1 of every forward: the last prompt position, then
    each newly fed token. Returns the generated tokens ``[batch, T]``.
    """
    import contextlib

    import torch

    mask = batch.attention_mask
    pos = batch.position_ids
    ctx = bridge.hooks(fwd_hooks=acc.hooks()) if acc is not None else contextlib.nullcontext()
    out = []
    with torch.no_grad(), ctx:
        if acc is not None:
            acc.sel = slice(-1, None)
        logits, cache = bridge(batch.tokens, attention_mask=mask, position_ids=pos,
                               return_type="logits_and_cache")
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        ones = torch.ones_like(mask[:, :1])
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, ones], dim=1)
            pos = pos[:, -1:] + 1
            logits, cache = bridge(nxt[:, None], attention_mask=mask, position_ids=pos,
                                   past_key_values=cache, return_type="logits_and_cache")
            nxt = logits[:, -1].argmax(-1)
            out.append(nxt)
    if acc is not None:
        acc.count += batch.tokens.shape[0] * max_new_tokens
    return torch.stack(out, dim=1)


def teacher_forced(bridge, batch: TokenBatch, continuation, acc: _Accumulator) -> None:
    """One forward over prompt + continuation[:, :-1], reading the T positions that predict
    the continuation (the same positions ``greedy_generate`` reads)."""
    import torch

    T = continuation.shape[1]
    tokens = torch.cat([batch.tokens, continuation[:, :-1]], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(continuation[:, :-1])], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    acc.sel = slice(batch.tokens.shape[1] - 1, None)
    with torch.no_grad(), bridge.hooks(fwd_hooks=acc.hooks()):
        bridge(tokens, attention_mask=mask, position_ids=pos, return_type=None)
    acc.count += tokens.shape[0] * T


# --------------------------------------------------------------------------------------------
# The pass over all prompts


def chunk_ranges(n: int, max_chunks: int) -> list[tuple[int, int]]:
    k = min(max_chunks, n)
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


def stats_key(base, model, probe, prompts: list[str], settings: StatsSettings) -> dict:
    return {
        "kind": "pair-stats",
        "stats_version": STATS_VERSION,
        "base_sha256": base.sha256,
        "model_sha256": model.sha256,
        "probe_sha256": probe.sha256,
        "prompts_sha256": prompts_sha256(prompts),
        "n_prompts": len(prompts),
        "settings": settings.key(),
        "dtype": base.dtype,
        "device_type": str(base.device).split(":")[0],
    }


def collect_pair(base, model, prompts: list[str], probe, settings: StatsSettings = StatsSettings(),
                 *, cache=None, progress: bool | None = None) -> PairStats:
    """Run the statistics pass on a (base, candidate) pair of LoadedModels.

    ``cache``: a ``mechclaims.cache.ResultCache``; chunks already on disk are loaded, not
    recomputed. ``progress``: show a tqdm bar (None = only on a terminal).
    """
    from tqdm.auto import tqdm

    from .cache import ResultCache

    if probe.d_model != base.d_model:
        from .errors import ProbeError

        raise ProbeError(f"the probe has width {probe.d_model} but the models' d_model is {base.d_model}.")
    cache = cache or ResultCache(None)
    entry = cache.entry(stats_key(base, model, probe, prompts, settings))
    ranges = chunk_ranges(len(prompts), settings.max_chunks)
    w_hat = probe.unit()
    prepend = bool(base.bridge.cfg.default_prepend_bos)
    results = []
    todo = sum(b - a for k, (a, b) in enumerate(ranges) if entry.load_chunk(k) is None)
    bar = tqdm(total=todo, unit="prompt", desc="mechclaims stats", disable=(None if progress is None else not progress),
               leave=False)
    for k, (a, b) in enumerate(ranges):
        arrays = entry.load_chunk(k)
        if arrays is None:
            arrays = _run_chunk(base, model, prompts[a:b], w_hat, settings, prepend, bar)
            _check_finite(arrays, f"chunk {k} (prompts {a}..{b - 1})")
            entry.save_chunk(k, arrays)
        results.append(arrays)
    bar.close()
    return PairStats(
        base=_stack(results, "base_"),
        model=_stack(results, "model_"),
        settings=settings,
        chunks=ranges,
        provenance={"cache_key": entry.key, "cache_digest": entry.digest,
                    "mlp_out_hook": MLP_OUT_HOOK, "positions_read": POSITIONS_READ},
    )


def _run_chunk(base, model, prompts, w_hat, settings, prepend, bar) -> dict[str, np.ndarray]:
    acc_b = _Accumulator(base.n_layers, base.d_mlp, w_hat, base.device)
    acc_m = _Accumulator(model.n_layers, model.d_mlp, w_hat, model.device)
    seqs = encode_prompts(base.tokenizer, prompts, max_prompt_tokens=settings.max_prompt_tokens,
                          prepend_bos=prepend)
    conts_b, conts_m = [], []
    T = settings.max_new_tokens
    for i in range(0, len(seqs), settings.batch_size):
        part = seqs[i:i + settings.batch_size]
        batch = pad_left(part, base.tokenizer.pad_token_id, device=base.device)
        cont_m = greedy_generate(model.bridge, batch, T, acc_m)
        if settings.positions == "own":
            cont_b = greedy_generate(base.bridge, batch, T, acc_b)
        else:
            teacher_forced(base.bridge, batch, cont_m, acc_b)
            cont_b = cont_m
        conts_b.append(cont_b.cpu().numpy())
        conts_m.append(cont_m.cpu().numpy())
        bar.update(len(part))
    out = {f"base_{k}": v for k, v in acc_b.to_numpy().items()}
    out.update({f"model_{k}": v for k, v in acc_m.to_numpy().items()})
    out["base_continuations"] = np.concatenate(conts_b).astype(np.int64)
    out["model_continuations"] = np.concatenate(conts_m).astype(np.int64)
    return out


def _check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise NumericalError(
                f"{bad} non-finite values in {name} for {where}: the model produced NaN/inf "
                "activations (try --dtype float32 if you used a 16-bit dtype)."
            )


def _stack(results: list[dict], prefix: str) -> ModelStats:
    get = lambda name: [r[prefix + name] for r in results]  # noqa: E731
    return ModelStats(
        act_sum=np.stack(get("act_sum")),
        count=np.array([float(np.asarray(c).reshape(())) for c in get("count")]),
        mlp_out_proj_sum=np.stack(get("mlp_out_proj_sum")),
        resid_post_proj_sum=np.stack(get("resid_post_proj_sum")),
        continuations=np.concatenate(get("continuations")),
    )
