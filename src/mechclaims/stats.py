"""One KV-cached greedy pass that streams per-neuron float64 sums.

For each prompt the model generates ``max_new_tokens`` (T, default 20) tokens greedily and
never stops early. The statistics are read at the positions whose outputs produce the
generated tokens: the last prompt position and every generated position but the last (T
positions for T tokens; the paper's GPT-2 path, 1(b)). Hooks add, in float64, each neuron's
``blocks.{l}.mlp.hook_post`` activation at those positions while the generation runs, so no
second forward over the sequence is needed. Left padding means the positions read are never
pads.

Where the hooks sit: a LoadedModel carries its bridge and the plain HF module that shares the
bridge's weights (see ``loading``). The pass runs on the plain module, with PyTorch hooks on
the very tensors the bridge's hook points expose (the input of the MLP output projection is
``hook_post``, its output ``mlp.out.hook_out``, the block's output ``hook_resid_post``), and
unembeds only the last position. The bridge's own forward re-implements attention and costs
several times plain transformers on a CPU; the tests check both paths give the same numbers.

Two position modes (paper A3):

``own``     each model on its own greedy continuation (Yang et al.; the paper's numbers).
``shared``  both models on one token sequence, the candidate (DPO) model's greedy
            continuation (Lee et al.). It removes the confound that the two models saw
            different tokens. Once the candidate has generated (without hooks), each model
            reads prompt + continuation in ONE parallel forward (``read_forced``): no
            token-by-token decoding for the base, and the same operations for both models, so
            a model compared with itself still shows exactly zero change.

Besides the per-neuron sums, each layer's mean projection onto the probe of the MLP output
(``hook_post @ W_out + b_out``) and of the residual stream after the block is accumulated at
the same positions.

Prompts are cut into K contiguous chunks (K = min(32, n_prompts) by default) and every sum
is kept per chunk: memory is O(K * n_neurons), independent of the number of prompts, the
chunks are the resampling units of the bootstrap, and each finished chunk is cached on disk
so that an interrupted run resumes where it stopped. Batches span chunk boundaries (each row
adds into its own chunk), so chunking never shrinks the batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from .choices import EARLY_POSITIONS, MLP_OUT_HOOK, POSITION_MODES, POSITIONS_READ
from .devices import placement_key
from .errors import ConfigError, NumericalError
from .prompts import TokenBatch, encode_prompts, pad_left, prompts_sha256

STATS_VERSION = 5  # 3: per-batch float64 partials merged in batch order (data parallel); 4: per-row
# partials, projections once per batch (summation order changed in the last bits); 5: the sums of
# the first EARLY_POSITIONS positions kept apart as well (per-position depth, claim Q4)


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
            raise ConfigError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}.")
        for name in ("max_new_tokens", "max_prompt_tokens", "max_chunks", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}.")

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
    #: [K, L, d_mlp] float64: the part of ``act_sum`` read at the first ``EARLY_POSITIONS``
    #: positions (the last prompt position and generated tokens 1..4): where the shift sits.
    act_early_sum: np.ndarray | None = None

    def _w(self, weights):
        return np.ones(self.count.shape[0]) if weights is None else np.asarray(weights, np.float64)

    def mean_act(self, weights=None) -> np.ndarray:
        """Mean activation per neuron ``[L, d_mlp]``; ``weights`` reweights chunks (bootstrap)."""
        w = self._w(weights)
        return np.tensordot(w, self.act_sum, axes=1) / (w @ self.count)

    def early_part_of_mean_act(self, weights=None) -> np.ndarray:
        """The first ``EARLY_POSITIONS`` positions' part of ``mean_act`` ``[L, d_mlp]``: their sum
        over *all* positions' count, so ``mean_act = early part + late part`` exactly."""
        w = self._w(weights)
        return np.tensordot(w, self.act_early_sum, axes=1) / (w @ self.count)

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
    """float64 per-chunk sums on the model's device, filled by PyTorch hooks on the plain HF
    modules of a LoadedModel (``stat_modules``):

    - forward pre-hook of the MLP output projection: its input is ``blocks.{l}.mlp.hook_post``
      (GELU output for GPT-2; act(gate) * up for gated MLPs), exactly what multiplies ``W_out``;
    - forward hook of that projection: its output is ``blocks.{l}.mlp.out.hook_out``
      (``hook_post @ W_out + b_out``);
    - forward hook of the block: its output is ``blocks.{l}.hook_resid_post``.

    Each batch fills its own float64 partial sums, one row per batch row (``begin``): on a
    decode step every hook is one in-place add of the position it reads (``buf += x[:, -1]``,
    cast to float64 inside the add), because a decode step is launch-bound on a GPU and every
    extra kernel per layer shows. The MLP output and the residual stream are summed whole
    (``d_model`` wide) and projected on ``w_hat`` once per batch, in ``take``, which also adds
    the rows of each chunk slot together (a deterministic segment sum, no atomics). ``commit``
    then adds a batch's partials into the per-chunk sums. Merging per batch, in batch order, is
    what makes a data-parallel run (``mechclaims.distributed``: batches computed on several
    ranks, partials merged everywhere in batch order) bit-identical to one process. ``sel``
    picks the positions read.

    Under a device map (layers on several devices) each layer's partials live on the device its
    activations are on, so a decode step copies nothing between devices; ``take`` gathers them
    onto the first device once per batch.

    The first ``EARLY_POSITIONS`` positions' activations are also summed apart (``act_early``):
    while decoding, the same add into a second buffer for the first steps only (``step``); in a
    forced read, the first positions of ``sel`` (``sel_early``).
    """

    def __init__(self, model, n_slots: int, w_hat):
        import torch

        from .loading import input_device

        dev = torch.device(input_device(model.hf_model))  # a split model's first device
        self.L, self.D, self.d_model = model.n_layers, model.d_mlp, model.d_model
        self.act = torch.zeros(n_slots, self.L, self.D, dtype=torch.float64, device=dev)
        self.act_early = torch.zeros(n_slots, self.L, self.D, dtype=torch.float64, device=dev)
        self.mlp_proj = torch.zeros(n_slots, self.L, dtype=torch.float64, device=dev)
        self.resid_proj = torch.zeros(n_slots, self.L, dtype=torch.float64, device=dev)
        self.count = torch.zeros(n_slots, dtype=torch.float64, device=dev)
        self.w_hat = w_hat.to(device=dev, dtype=torch.float64)
        self.rows = None   # batch row -> row of the batch's per-slot partials (on the first device)
        self.slots = None  # row of the per-slot partials -> chunk slot
        self.part = None
        self.sel = slice(-1, None)
        self.sel_early = None  # forced read: the first EARLY_POSITIONS of ``sel``
        self.step = 0          # decoding: which generated position the hooks are reading
        self._modules = model.stat_modules
        self._handles = []

    def begin(self, row_slots) -> None:
        """Start a batch whose rows add into the chunk slots ``row_slots`` (a 1-D tensor)."""
        import torch

        row_slots = row_slots.cpu()
        slots, rows = torch.unique(row_slots, sorted=True, return_inverse=True)
        dev = self.act.device
        self.slots, self.rows = slots.to(dev), rows.to(dev)
        # The segment sum in ``take``: rows grouped by slot (stable, so each slot's rows add in
        # batch order), then split into runs of known length: no device sync, no atomics.
        order = torch.argsort(rows, stable=True)
        self._order = None if bool((order == torch.arange(len(rows))).all()) else order.to(dev)
        self._runs = torch.bincount(rows, minlength=len(slots)).tolist()
        self._n = len(row_slots)
        # Per layer, [batch, width], allocated on first use on the device the layer's activations are on.
        self.part = {"act": [None] * self.L, "act_early": [None] * self.L, "mlp_out": [None] * self.L,
                     "resid_post": [None] * self.L, "count": torch.zeros(len(slots), dtype=torch.float64, device=dev)}
        self.step = 0

    def _add(self, name: str, layer: int, x, sel=None) -> None:
        import torch

        sel = self.sel if sel is None else sel
        buf = self.part[name][layer]
        if buf is None:
            buf = self.part[name][layer] = torch.zeros(self._n, x.shape[-1], dtype=torch.float64, device=x.device)
        if sel == slice(-1, None):  # decoding: one position, one kernel
            buf.add_(x[:, -1])
        else:
            buf.add_(x[:, sel].sum(dim=1, dtype=torch.float64))

    def _stacked(self, name: str, width: int):
        """``[batch, L, width]`` float64 on the first device (zeros for a layer that never ran)."""
        import torch

        dev = self.act.device
        return torch.stack([torch.zeros(self._n, width, dtype=torch.float64, device=dev) if b is None
                            else b.to(dev) for b in self.part[name]], dim=1)

    def _by_slot(self, x):
        """Per-row sums ``[batch, ...]`` -> per-slot sums ``[slots, ...]``, rows in batch order."""
        import torch

        if self._order is not None:
            x = x.index_select(0, self._order)
        return torch.stack([run.sum(dim=0) for run in torch.split(x, self._runs)])

    def take(self, portable: bool = False) -> dict:
        """This batch's partial sums per chunk slot, on the first device (on the CPU when
        ``portable``, to send to other ranks)."""
        act = self._stacked("act", self.D)
        act_early = self._stacked("act_early", self.D)
        mlp = self._stacked("mlp_out", self.d_model) @ self.w_hat      # [batch, L]
        resid = self._stacked("resid_post", self.d_model) @ self.w_hat
        part = {"slots": self.slots, "act": self._by_slot(act), "act_early": self._by_slot(act_early),
                "mlp_proj": self._by_slot(mlp),
                "resid_proj": self._by_slot(resid), "count": self.part["count"]}
        self.part = None
        return {k: v.cpu() for k, v in part.items()} if portable else part

    def commit(self, part: dict) -> None:
        """Add one batch's partials into the per-chunk sums."""
        dev = self.act.device
        slots = part["slots"].to(dev)
        for name in ("act", "act_early", "mlp_proj", "resid_proj", "count"):
            getattr(self, name).index_add_(0, slots, part[name].to(dev))

    def __enter__(self):
        for layer, (block, proj) in enumerate(self._modules):
            self._handles.append(proj.register_forward_pre_hook(partial(self._post, layer)))
            self._handles.append(proj.register_forward_hook(partial(self._out, "mlp_out", layer)))
            self._handles.append(block.register_forward_hook(partial(self._out, "resid_post", layer)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _post(self, layer, module, args):
        if self.part is not None:  # None between batches (shared mode: the candidate generating)
            self._add("act", layer, args[0])
            if self.sel_early is not None:
                self._add("act_early", layer, args[0], self.sel_early)
            elif self.sel == slice(-1, None) and self.step < EARLY_POSITIONS:
                self._add("act_early", layer, args[0])

    def _out(self, target, layer, module, args, out):
        if self.part is not None:
            self._add(target, layer, out[0] if isinstance(out, tuple) else out)

    def slot_arrays(self, slot: int) -> dict[str, np.ndarray]:
        return {
            "act_sum": self.act[slot].cpu().numpy(),
            "act_early_sum": self.act_early[slot].cpu().numpy(),
            "count": np.array(float(self.count[slot])),
            "mlp_out_proj_sum": self.mlp_proj[slot].cpu().numpy(),
            "resid_post_proj_sum": self.resid_proj[slot].cpu().numpy(),
        }


def greedy_generate(model, batch: TokenBatch, max_new_tokens: int, acc: _Accumulator | None = None):
    """Greedy KV-cached generation of exactly ``max_new_tokens`` tokens (no early stop) on the
    plain HF module of a LoadedModel (or on a plain HF causal LM, e.g. a policy while it
    trains); only the last position is unembedded.

    With ``acc`` (already entered, a batch begun), its hooks read position -1 of every
    forward: the last prompt position, then each newly fed token. Returns the generated
    tokens, ``[batch, T]``.
    """
    import torch
    from transformers import DynamicCache

    hf = getattr(model, "hf_model", model)
    mask, pos = batch.attention_mask, batch.position_ids
    cache = DynamicCache(config=hf.config)
    out = []

    def step(logits, t):
        return logits[:, -1].argmax(-1)

    with torch.no_grad():
        if acc is not None:
            acc.sel, acc.sel_early, acc.step = slice(-1, None), None, 0
        logits = hf(batch.tokens, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1).logits
        nxt = step(logits, 0)
        out.append(nxt)
        ones = torch.ones_like(mask[:, :1])
        for t in range(1, max_new_tokens):
            mask = torch.cat([mask, ones], dim=1)
            pos = pos[:, -1:] + 1
            if acc is not None:
                acc.step = t
            logits = hf(nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                        use_cache=True, logits_to_keep=1).logits
            nxt = step(logits, t)
            out.append(nxt)
    if acc is not None:
        acc.part["count"].index_add_(0, acc.rows, torch.full_like(acc.rows, max_new_tokens, dtype=torch.float64))
    return torch.stack(out, dim=1)


def continuations(model, tokenizer, prompts: list[str], settings: StatsSettings = StatsSettings(), *,
                  prepend_bos: bool = True) -> np.ndarray:
    """``[n_prompts, max_new_tokens]`` greedy continuation tokens (no statistics), in prompt
    order: the same encoding, padding and decoding steps as the statistics pass. ``model``:
    a LoadedModel or a plain HF causal LM."""
    from .loading import input_device

    hf = getattr(model, "hf_model", model)
    device = input_device(hf)
    seqs = encode_prompts(tokenizer, prompts, max_prompt_tokens=settings.max_prompt_tokens,
                          prepend_bos=prepend_bos)
    out = [greedy_generate(model, pad_left(seqs[j:j + settings.batch_size], tokenizer.pad_token_id,
                                           device=device), settings.max_new_tokens).cpu().numpy()
           for j in range(0, len(seqs), settings.batch_size)]
    return np.concatenate(out).astype(np.int64)


def read_forced(model, batch: TokenBatch, tokens, acc: _Accumulator) -> None:
    """One parallel forward of prompt + ``tokens[:, :-1]`` with ``acc``'s hooks reading the T
    positions whose outputs produce ``tokens`` (the last prompt position and the first T-1
    continuation positions), the positions greedy decoding reads one step at a time."""
    import torch

    hf = getattr(model, "hf_model", model)
    T, P = tokens.shape[1], batch.tokens.shape[1]
    dev = batch.tokens.device
    feed = tokens[:, :-1].to(dev)
    ids = torch.cat([batch.tokens, feed], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(feed, dtype=batch.attention_mask.dtype)], dim=1)
    pos = torch.cat([batch.position_ids, batch.position_ids[:, -1:] + torch.arange(1, T, device=dev)], dim=1)
    acc.sel = slice(P - 1, P - 1 + T)
    acc.sel_early = slice(P - 1, P - 1 + min(T, EARLY_POSITIONS))
    with torch.no_grad():
        hf(ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
    acc.part["count"].index_add_(0, acc.rows, torch.full_like(acc.rows, T, dtype=torch.float64))


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
        **placement_key(base.device, getattr(base, "device_map", "")),
    }


def base_stats_key(base, probe, prompts: list[str], settings: StatsSettings) -> dict:
    """The base model's own-mode statistics, whatever the candidate (a sweep shares them)."""
    key = stats_key(base, base, probe, prompts, settings)
    key.pop("model_sha256")
    key["kind"] = "base-stats"
    return key


def collect_pair(base, model, prompts: list[str], probe, settings: StatsSettings = StatsSettings(),
                 *, cache=None, progress: bool | None = None) -> PairStats:
    """Run the statistics pass on a (base, candidate) pair of LoadedModels.

    Batches of ``batch_size`` prompts run through both models regardless of chunk boundaries;
    each row's sums land in its chunk's slot. A chunk is written to ``cache`` (a
    ``mechclaims.cache.ResultCache``) as soon as its last prompt is done, and chunks already
    on disk are loaded, not recomputed. ``progress``: a tqdm bar (None = only on a terminal).
    """
    import torch
    from tqdm.auto import tqdm

    from .cache import ResultCache

    if probe.d_model != base.d_model:
        from .errors import ProbeError

        raise ProbeError(f"the probe has width {probe.d_model} but the models' d_model is {base.d_model}.")
    import time

    from .distributed import fault_point, from_writer, gather_in_order, world

    t_start = time.perf_counter()
    cache = cache or ResultCache(None)
    entry = cache.entry(stats_key(base, model, probe, prompts, settings))
    ranges = chunk_ranges(len(prompts), settings.max_chunks)
    # Rank 0 decides what is cached (its cache directory is the one written), for every rank.
    done = from_writer({k: arr for k in range(len(ranges)) if (arr := entry.load_chunk(k)) is not None})
    todo = [k for k in range(len(ranges)) if k not in done]
    # In "own" mode the base's pass does not depend on the candidate: it is cached on its own,
    # so a sweep over the checkpoints of a run generates with the base once.
    base_entry = cache.entry(base_stats_key(base, probe, prompts, settings)) if settings.positions == "own" else None
    base_done = from_writer({k: arr for k in todo if base_entry is not None
                             and (arr := base_entry.load_chunk(k)) is not None})
    reuse_base = bool(todo) and len(base_done) == len(todo)
    if todo:
        w = world()
        rows = [(i, slot) for slot, k in enumerate(todo) for i in range(*ranges[k])]
        seqs = encode_prompts(base.tokenizer, [prompts[i] for i, _ in rows],
                              max_prompt_tokens=settings.max_prompt_tokens,
                              prepend_bos=bool(base.bridge.cfg.default_prepend_bos))
        slots = torch.tensor([slot for _, slot in rows], dtype=torch.long)
        last_row = {slot: j for j, (_, slot) in enumerate(rows)}  # a slot is complete after it
        w_hat = probe.unit()
        acc_b, acc_m = _Accumulator(base, len(todo), w_hat), _Accumulator(model, len(todo), w_hat)
        conts_b: dict[int, list] = {s: [] for s in range(len(todo))}
        conts_m: dict[int, list] = {s: [] for s in range(len(todo))}
        T, bs = settings.max_new_tokens, settings.batch_size
        starts = list(range(0, len(rows), bs))  # the batches; the same for any number of ranks
        bar = tqdm(total=len(rows), unit="prompt", desc="mechclaims stats", leave=False,
                   # None: tqdm's own rule, no bar unless stderr is a terminal (`None or False` was
                   # False: a bar, with its '\r's, in every log file and captured stderr)
                   disable=True if not w.is_writer else (None if progress is None else not progress))
        with acc_b, acc_m:
            for r0 in range(0, len(starts), w.world_size):
                local = []
                for b in (r0 + w.rank,) if r0 + w.rank < len(starts) else ():
                    fault_point(b)
                    j = starts[b]
                    batch = pad_left(seqs[j:j + bs], base.tokenizer.pad_token_id, device=base.device)
                    if settings.positions == "shared":  # hooks idle: no batch begun yet
                        cont_m = cont_b = greedy_generate(model, batch, T)
                    acc_m.begin(slots[j:j + bs])
                    acc_b.begin(slots[j:j + bs])
                    if settings.positions == "shared":  # one continuation, read by both in parallel
                        read_forced(model, batch, cont_m, acc_m)
                        read_forced(base, batch, cont_m, acc_b)
                    else:
                        cont_m = greedy_generate(model, batch, T, acc_m)
                        # the base's own pass, unless read from its own cache entry below
                        cont_b = None if reuse_base else greedy_generate(base, batch, T, acc_b)
                    local.append((b, {"m": acc_m.take(w.active), "b": acc_b.take(w.active),
                                      "cont_m": cont_m.cpu().numpy(),
                                      "cont_b": None if cont_b is None else cont_b.cpu().numpy()}))
                for b, part in gather_in_order(local):
                    j = starts[b]
                    batch_slots = slots[j:j + bs].tolist()
                    acc_m.commit(part["m"])
                    acc_b.commit(part["b"])
                    for r, slot in enumerate(batch_slots):
                        if part["cont_b"] is not None:
                            conts_b[slot].append(part["cont_b"][r])
                        conts_m[slot].append(part["cont_m"][r])
                    for slot in sorted({s for s in batch_slots if last_row[s] < j + bs}):
                        k = todo[slot]
                        if reuse_base:
                            arrays = {n: v for n, v in base_done[k].items() if n.startswith("base_")}
                        else:
                            arrays = {f"base_{n}": v for n, v in acc_b.slot_arrays(slot).items()}
                            arrays["base_continuations"] = np.stack(conts_b[slot]).astype(np.int64)
                        arrays.update({f"model_{n}": v for n, v in acc_m.slot_arrays(slot).items()})
                        arrays["model_continuations"] = np.stack(conts_m[slot]).astype(np.int64)
                        _check_finite(arrays, f"chunk {k} (prompts {ranges[k][0]}..{ranges[k][1] - 1})")
                        entry.save_chunk(k, arrays)
                        if base_entry is not None and not reuse_base:
                            base_entry.save_chunk(k, {n: v for n, v in arrays.items() if n.startswith("base_")})
                        done[k] = arrays
                    bar.update(len(batch_slots))
        bar.close()
    results = [done[k] for k in range(len(ranges))]
    return PairStats(
        base=stack_chunks(results, "base_"),
        model=stack_chunks(results, "model_"),
        settings=settings,
        chunks=ranges,
        provenance={"cache_key": entry.key, "cache_digest": entry.digest,
                    "mlp_out_hook": MLP_OUT_HOOK, "positions_read": POSITIONS_READ,
                    "seconds": round(time.perf_counter() - t_start, 3), "chunks_computed": len(todo)},
    )


def _check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise NumericalError(
                f"{bad} non-finite values in {name} for {where}: the model produced NaN/inf "
                "activations (try --dtype float32 if you used a 16-bit dtype)."
            )


def stack_chunks(results: list[dict], prefix: str) -> ModelStats:
    get = lambda name: [r[prefix + name] for r in results]  # noqa: E731
    return ModelStats(
        act_sum=np.stack(get("act_sum")),
        count=np.array([float(np.asarray(c).reshape(())) for c in get("count")]),
        mlp_out_proj_sum=np.stack(get("mlp_out_proj_sum")),
        resid_post_proj_sum=np.stack(get("resid_post_proj_sum")),
        continuations=np.concatenate(get("continuations")),
        act_early_sum=np.stack(get("act_early_sum")),
    )
