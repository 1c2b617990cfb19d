"""Interventions on a LoadedModel: activation patching, weight scaling, direction subtraction
and the paper's tuning-free activation editing.

Every intervention is a context manager that acts on the *plain* HF module of a LoadedModel
(``model.hf_model``), so it applies to ``mechclaims.stats.greedy_generate``, to the statistics
pass and to any plain forward. On exit, even when the body raised, everything is undone:
hooks are removed and edited weight slices are written back from saved copies, so the
parameters are bit-identical to before.

Two kinds:

- **Hook interventions** (``patch_neurons``, ``subtract_direction``, ``record_neurons``) use
  PyTorch hooks on the plain module's MLP output projection (``c_proj`` / ``down_proj``, from
  ``LoadedModel.stat_modules``). The projection's input is exactly the bridge's
  ``blocks.{l}.mlp.hook_post`` and its output ``blocks.{l}.mlp.out.hook_out``. The bridge is a
  separate module tree that only shares the *parameters*, so hook interventions are not seen
  by ``model.bridge`` forwards. Patch hooks are registered with ``prepend=True``: they run
  before any other hook on the module (for instance the statistics accumulator), which
  therefore observes the patched activations.
- **Weight interventions** (``scale_value_vectors``, ``scale_key_vectors``) edit parameter
  slices in place. The bridge shares those parameters, so both views see the edit.

Positions (paper A10). ``positions="all"`` patches every position of every forward;
``"last"`` only position -1 of each forward. In KV-cached generation the prefill forward holds
the whole prompt and every later forward holds one new token, so

- ``"all"``: the whole prompt (in the prefill) and every generated position. We use it for
  generation and for perplexity. The paper's v3 perplexity hook indexed position 0 (an index,
  not a slice), so its PPL under patching/editing was essentially unpatched; we patch all
  positions instead (the notes' recommended default).
- ``"last"``: the last prompt position, then each generated token: the paper's v3 generation
  hook (``hook_timesteps = -1``) and Lee et al.'s subtraction hook during generation.

What is patched is the post-activation (the input of ``c_proj`` / ``down_proj``: GELU output
for GPT-2, ``act(gate) * up`` for gated MLPs), as in v3; v1 patched the pre-GELU value through
an inverse GELU of the mean, which we do not reproduce.

Neuron sets are given as flat indices ``layer * d_mlp + i`` (any integer array, order kept)
or a boolean mask ``[n_layers, d_mlp]`` (order: ascending flat index). Nothing loops over
neurons in Python; loops run over layers.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .choices import CELLS, HOOK_POSITIONS
from .errors import InterventionError

SELECT_RULES = ("paper", "largest")
EDIT_CELLS = CELLS                          # codes 0..3, as attribution's sign cells
POSITIONS = HOOK_POSITIONS
_SHRINK = np.array([True, False, False, True])  # TP, AN shrink; TN, AP grow
_PAPER_LARGEST = np.array([True, False, False, True])  # paper: largest |cos| in TP, AN only
GATED_PARTS = ("gate", "up", "both")
_IN_NAMES = ("c_fc", "fc_in", "fc1", "dense_h_to_4h", "w1")  # non-gated MLP input layers


# --------------------------------------------------------------------------------------------
# Neuron sets and values


def _shape(model_or_shape) -> tuple[int, int]:
    if isinstance(model_or_shape, tuple):
        return int(model_or_shape[0]), int(model_or_shape[1])
    return model_or_shape.n_layers, model_or_shape.d_mlp


def neuron_index(model_or_shape, neurons) -> np.ndarray:
    """Flat int64 indices ``layer * d_mlp + i`` of a neuron set, in the order given.

    ``neurons``: integer indices (any array-like), or a boolean mask ``[n_layers, d_mlp]``
    (then ascending flat order). ``model_or_shape``: a LoadedModel or ``(n_layers, d_mlp)``.
    Raises InterventionError for out-of-range, duplicate or non-integer indices, or a mask of
    the wrong shape.
    """
    L, D = _shape(model_or_shape)
    if hasattr(neurons, "detach"):  # a torch tensor
        neurons = neurons.detach().cpu().numpy()
    arr = np.asarray(neurons)
    if arr.dtype == bool:
        if arr.shape != (L, D):
            raise InterventionError(
                f"a boolean neuron mask must have shape (n_layers, d_mlp) = {(L, D)}; got {arr.shape}.")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InterventionError(
            f"neurons must be integer flat indices (layer * d_mlp + i) or a boolean mask "
            f"[{L}, {D}]; got dtype {arr.dtype}.")
    flat = arr.astype(np.int64).ravel()
    bad = (flat < 0) | (flat >= L * D)
    if bad.any():
        raise InterventionError(
            f"{int(bad.sum())} neuron indices out of range [0, {L * D}) (n_layers={L}, d_mlp={D}); "
            f"first: {flat[bad][:3].tolist()}. Flat index = layer * d_mlp + neuron.")
    if np.unique(flat).size != flat.size:
        raise InterventionError("neuron indices contain duplicates; each neuron may appear once.")
    return flat


@contextmanager
def _removing_hooks():
    """A list to append hook handles to; every one is removed on exit, whatever happens."""
    handles: list = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise InterventionError(f"positions must be one of {POSITIONS}, got {positions!r}.")


def _per_layer(flat: np.ndarray, L: int, D: int):
    """Yield (layer, local neuron indices, columns into the neuron order) per layer in use."""
    layers = flat // D
    for layer in np.unique(layers).tolist():
        cols = np.flatnonzero(layers == layer)
        yield int(layer), flat[cols] % D, cols


def _as_tensor(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _values_tensor(values, flat: np.ndarray, L: int, D: int):
    """Normalise ``values`` to a tensor ``[n]`` (constants) or ``[batch, pos, n]`` (per token)."""
    import torch

    v = _as_tensor(values)
    n = flat.size
    if not torch.is_floating_point(v):
        v = v.to(torch.float64)
    if v.ndim == 0:
        return v.expand(n).clone(), False
    if v.ndim == 1 and v.shape[0] == n:
        return v, False
    if v.ndim == 2 and tuple(v.shape) == (L, D):
        return v.reshape(-1)[torch.as_tensor(flat)], False
    if v.ndim == 3 and v.shape[-1] == n:
        return v, True
    raise InterventionError(
        f"values of shape {tuple(v.shape)} do not fit {n} neurons; expected a scalar, [{n}] (one "
        f"constant per neuron, in the order of the neuron set), [{L}, {D}] (a grid, e.g. mean "
        f"activations) or [batch, positions, {n}] (per-token values).")


def _device_dtype(model):
    p = next(model.hf_model.parameters())
    return p.device, p.dtype


# --------------------------------------------------------------------------------------------
# Activation patching


@contextmanager
def patch_neurons(model, neurons, values, *, positions: str = "all"):
    """Set the post-activations (``hook_post``, the MLP output projection's input) of
    ``neurons`` to ``values`` in every forward of ``model.hf_model`` inside the block.

    ``values``:

    - a scalar, ``[n]`` (one constant per neuron, in the order of ``neurons``) or a grid
      ``[n_layers, d_mlp]`` (e.g. the DPO model's mean activations ``ModelStats.mean_act()``,
      read at the neurons): constants, as in the paper (A10);
    - ``[batch, total_positions, n]``: per-token values. They are consumed in order across
      forwards: each forward takes the next ``seq_len`` positions (``"all"``) or the next one
      (``"last"``). A ``record_neurons`` recording of another model (or of this one) on the
      same tokens, and in the same forwards (one full forward, or one KV-cached generation),
      has exactly this layout. Running out of values, or a batch mismatch, raises.

    ``positions``: ``"all"`` or ``"last"`` (see the module docstring). Values are cast to the
    activations' dtype. The hooks run before any other hook on the projection.
    """
    import torch

    _check_positions(positions)
    L, D = _shape(model)
    flat = neuron_index(model, neurons)
    vals, per_token = _values_tensor(values, flat, L, D)
    if not torch.isfinite(vals).all():
        raise InterventionError("patch values contain NaN or inf.")
    device, dtype = _device_dtype(model)
    vals = vals.to(device=device, dtype=dtype)
    with _removing_hooks() as handles:
        for layer, local, cols in _per_layer(flat, L, D):
            idx = torch.as_tensor(local, device=device)
            v = vals[..., torch.as_tensor(cols, device=device)]
            proj = model.stat_modules[layer][1]
            cls = _PerTokenPatch if per_token else _ConstPatch
            hook = cls(layer, idx, v, positions, D)
            handles.append(proj.register_forward_pre_hook(hook, prepend=True))
        yield


def _check_width(x, layer: int, D: int) -> None:
    if x.shape[-1] != D:
        raise InterventionError(
            f"layer {layer}: the MLP output projection's input has width {x.shape[-1]}, not "
            f"d_mlp={D}; this architecture's projection input is not hook_post.")


class _ConstPatch:
    def __init__(self, layer, idx, values, positions, d_mlp):
        self.layer, self.idx, self.values, self.positions = layer, idx, values, positions
        self.d_mlp = d_mlp

    def __call__(self, module, args):
        _check_width(args[0], self.layer, self.d_mlp)
        x = args[0].clone()  # [batch, pos, d_mlp]
        if self.positions == "all":
            x[..., self.idx] = self.values.to(x.dtype)
        else:
            x[:, -1, self.idx] = self.values.to(x.dtype)
        return (x,) + tuple(args[1:])


class _PerTokenPatch:
    """Per-token values ``[batch, total_positions, n_l]`` consumed in order across forwards."""

    def __init__(self, layer, idx, values, positions, d_mlp):
        self.layer, self.idx, self.values, self.positions = layer, idx, values, positions
        self.d_mlp = d_mlp
        self.cursor = 0

    def __call__(self, module, args):
        _check_width(args[0], self.layer, self.d_mlp)
        x = args[0].clone()  # [batch, pos, d_mlp]
        n_pos = x.shape[1] if self.positions == "all" else 1
        B, total = self.values.shape[0], self.values.shape[1]
        if x.shape[0] != B:
            raise InterventionError(
                f"layer {self.layer}: per-token values have batch {B}, the forward has batch {x.shape[0]}.")
        if self.cursor + n_pos > total:
            raise InterventionError(
                f"layer {self.layer}: per-token values hold {total} positions, but the forwards "
                f"so far need {self.cursor + n_pos}; record them on the same tokens and forwards.")
        chunk = self.values[:, self.cursor:self.cursor + n_pos].to(x.dtype)  # [batch, n_pos, n_l]
        if self.positions == "all":
            x[..., self.idx] = chunk
        else:
            x[:, -1, self.idx] = chunk[:, 0]
        self.cursor += n_pos
        return (x,) + tuple(args[1:])


class NeuronRecording:
    """What ``record_neurons`` saw: per layer, the activations of each forward, in order."""

    def __init__(self, flat: np.ndarray, L: int, D: int):
        self.flat, self.L, self.D = flat, L, D
        self._parts = {layer: (local, cols, []) for layer, local, cols in _per_layer(flat, L, D)}

    def values(self):
        """``[batch, total_positions, n]``, the layout ``patch_neurons`` takes as per-token values
        (neurons in the order given to ``record_neurons``)."""
        import torch

        if not self._parts:
            return torch.zeros(0, 0, 0)
        if not next(iter(self._parts.values()))[2]:
            raise InterventionError("nothing was recorded: no forward ran inside record_neurons.")
        first = torch.cat(next(iter(self._parts.values()))[2], dim=1)
        out = first.new_empty(first.shape[0], first.shape[1], self.flat.size)
        for _local, cols, chunks in self._parts.values():
            out[..., torch.as_tensor(cols, device=out.device)] = torch.cat(chunks, dim=1)
        return out


@contextmanager
def record_neurons(model, neurons=None, *, positions: str = "all"):
    """Record the post-activations of ``neurons`` (default: all, in flat order) in every forward
    of ``model.hf_model`` inside the block; yields a NeuronRecording. ``positions`` as in
    ``patch_neurons``. Registered after (not prepended to) other hooks, so under a patch it
    records the patched values."""
    import torch

    _check_positions(positions)
    L, D = _shape(model)
    flat = np.arange(L * D, dtype=np.int64) if neurons is None else neuron_index(model, neurons)
    rec = NeuronRecording(flat, L, D)
    def hook(layer, idx, store, module, args):
        x = args[0]
        _check_width(x, layer, D)
        sel = x[..., idx] if positions == "all" else x[:, -1:, idx]
        store.append(sel.detach().clone())

    device, _ = _device_dtype(model)
    with _removing_hooks() as handles:
        for layer, (local, _cols, store) in rec._parts.items():
            idx = torch.as_tensor(local, device=device)
            proj = model.stat_modules[layer][1]
            handles.append(proj.register_forward_pre_hook(partial(hook, layer, idx, store)))
        yield rec


# --------------------------------------------------------------------------------------------
# Weight edits


def _module_names(model) -> dict[int, str]:
    return {id(mod): name for name, mod in model.hf_model.named_modules()}


def _mlp_of(model, layer: int, names: dict[int, str]):
    proj = model.stat_modules[layer][1]
    name = names[id(proj)]
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    return model.hf_model.get_submodule(parent), proj


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 Conv1D: weight [in, out]


def _neuron_axis(module, side: str, layer: int, D: int) -> int:
    """Axis of ``module.weight`` that indexes neurons. ``side="in"``: the layer that produces the
    neuron (neurons are its outputs); ``side="out"``: the projection that reads it (inputs).
    Conv1D stores [in, out], Linear [out, in]."""
    conv = _is_conv1d(module)
    axis = (1 if conv else 0) if side == "in" else (0 if conv else 1)
    w = getattr(module, "weight", None)
    if w is None or w.ndim != 2 or w.shape[axis] != D:
        raise InterventionError(
            f"layer {layer}: {type(module).__name__} has no 2-D weight with d_mlp={D} along "
            f"axis {axis}; cannot locate this neuron's weights.")
    return axis


@contextmanager
def _scaled_slices(edits):
    """``edits``: (parameter, axis, index tensor, factor). Saves each slice, writes slice*factor,
    and on exit writes the saved slice back (bit-exact, whatever happened inside)."""
    import torch

    saved = []
    try:
        with torch.no_grad():
            for param, axis, idx, factor in edits:
                orig = param.data.index_select(axis, idx).clone()
                saved.append((param, axis, idx, orig))
                param.data.index_copy_(axis, idx, orig * factor)
        yield
    finally:
        with torch.no_grad():
            for param, axis, idx, orig in reversed(saved):
                param.data.index_copy_(axis, idx, orig)


def _check_factor(factor) -> float:
    f = float(factor)
    if not math.isfinite(f):
        raise InterventionError(f"factor must be finite, got {factor!r}.")
    return f


@contextmanager
def scale_value_vectors(model, neurons, factor: float):
    """Multiply the value vectors (rows of ``W_out``) of ``neurons`` by ``factor``; 0 ablates
    them (paper v1 Table 1). Edits ``c_proj.weight`` rows (GPT-2 Conv1D ``[d_mlp, d_model]``) or
    ``down_proj.weight`` columns (Linear ``[d_model, d_mlp]``); ``b_out`` is untouched. The bridge
    shares these parameters, so its ``W_out`` and forwards see the edit too."""
    import torch

    f = _check_factor(factor)
    L, D = _shape(model)
    flat = neuron_index(model, neurons)
    device, _ = _device_dtype(model)
    edits = []
    for layer, local, _cols in _per_layer(flat, L, D):
        proj = model.stat_modules[layer][1]
        axis = _neuron_axis(proj, "out", layer, D)
        edits.append((proj.weight, axis, torch.as_tensor(local, device=device), f))
    with _scaled_slices(edits):
        yield


@contextmanager
def scale_key_vectors(model, neurons, factor: float, *, gated_part: str = "gate",
                      scale_bias: bool = False):
    """Multiply the key vectors (``W_in`` columns) of ``neurons`` by ``factor``: Lee et al.'s
    un-alignment (top-7 toxic neurons of the DPO model, x10).

    GPT-2: ``c_fc.weight[:, i]`` (Conv1D ``[d_model, d_mlp]``). Lee scaled the key vector only,
    not the ``c_fc`` bias, so the pre-activation becomes ``factor * (k . x) + b``; pass
    ``scale_bias=True`` to scale ``b_in[i]`` too (then the pre-activation scales exactly).
    Gated MLPs have two input vectors per neuron, ``post = act(g . x) * (u . x)``:
    ``gated_part="gate"`` (default) scales the gate row, the analogue of GPT-2's key (it feeds
    the nonlinearity); ``"up"`` scales the up row (the activation then scales exactly by
    ``factor``); ``"both"`` scales both. Ignored for non-gated MLPs.
    """
    import torch

    f = _check_factor(factor)
    if gated_part not in GATED_PARTS:
        raise InterventionError(f"gated_part must be one of {GATED_PARTS}, got {gated_part!r}.")
    L, D = _shape(model)
    flat = neuron_index(model, neurons)
    device, _ = _device_dtype(model)
    names = _module_names(model) if flat.size else {}
    edits = []
    for layer, local, _cols in _per_layer(flat, L, D):
        mlp, _proj = _mlp_of(model, layer, names)
        idx = torch.as_tensor(local, device=device)
        for mod in _input_modules(mlp, layer, model.gated, gated_part):
            axis = _neuron_axis(mod, "in", layer, D)
            edits.append((mod.weight, axis, idx, f))
            if scale_bias and getattr(mod, "bias", None) is not None:
                edits.append((mod.bias, 0, idx, f))
    with _scaled_slices(edits):
        yield


def _input_modules(mlp, layer: int, gated: bool, gated_part: str) -> list:
    if gated:
        parts = {"gate": ("gate_proj",), "up": ("up_proj",), "both": ("gate_proj", "up_proj")}[gated_part]
        mods = [getattr(mlp, p, None) for p in parts]
        if any(m is None for m in mods):
            raise InterventionError(
                f"layer {layer}: the gated MLP {type(mlp).__name__} has no {parts}; unsupported.")
        return mods
    for name in _IN_NAMES:
        if getattr(mlp, name, None) is not None:
            return [getattr(mlp, name)]
    raise InterventionError(
        f"layer {layer}: cannot find the MLP input layer of {type(mlp).__name__} "
        f"(looked for {_IN_NAMES}); unsupported architecture for key-vector scaling.")


# --------------------------------------------------------------------------------------------
# Direction subtraction (Lee et al.)


@contextmanager
def subtract_direction(model, direction, scale: float, *, layer=-1, positions: str = "all",
                       normalize: bool = True):
    """Subtract ``scale * w_hat`` from the MLP output of ``layer`` (default the last; an int or
    a list of ints) at every position (``"all"``) or at position -1 of each forward
    (``"last"``, Lee et al.'s generation hook; Lee used all positions for PPL).

    ``direction``: a Probe (its raw ``direction``), tensor or array ``[d_model]``. ``normalize=True`` subtracts the unit
    vector, so the projection of the MLP output onto ``w_hat`` drops by exactly ``scale``.
    Lee et al. subtracted the *raw* vector (probe ``W_Toxic`` at scale 50, value vector
    ``MLP.v_770^19`` at 20, ``SVD.U_Toxic[0]`` at 100): pass ``normalize=False`` to reproduce
    their scales. The hook sits on the MLP output projection's output (``mlp.out.hook_out``,
    ``b_out`` included); GPT-2's MLP dropout is the identity in eval, and for Gemma-2 this is
    before the post-feedforward norm.
    """
    import torch

    _check_positions(positions)
    s = _check_factor(scale)
    vec = _as_tensor(direction.direction if hasattr(direction, "unit") else direction)
    vec = vec.reshape(-1).to(torch.float64)
    if vec.shape[0] != model.d_model:
        raise InterventionError(f"direction has width {vec.shape[0]}, the model's d_model is {model.d_model}.")
    norm = float(vec.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise InterventionError("direction must be finite and non-zero.")
    if normalize:
        vec = vec / norm
    device, dtype = _device_dtype(model)
    delta = (s * vec).to(device=device, dtype=dtype)
    layers = [layer] if isinstance(layer, (int, np.integer)) else list(layer)
    L = model.n_layers
    for lay in layers:
        if not -L <= int(lay) < L:
            raise InterventionError(f"layer {lay} out of range for a model with {L} layers.")

    def hook(module, args, out):
        y = out.clone()  # [batch, pos, d_model]
        if positions == "all":
            y -= delta.to(y.dtype)
        else:
            y[:, -1] -= delta.to(y.dtype)
        return y

    with _removing_hooks() as handles:
        for lay in sorted({int(x) % L for x in layers}):
            handles.append(model.stat_modules[lay][1].register_forward_hook(hook, prepend=True))
        yield


# --------------------------------------------------------------------------------------------
# Activation editing (paper v3, 1(g))


@dataclass
class EditPlan:
    """Neurons and constants of the tuning-free activation edit (base-model quantities only).

    ``neurons`` ascending flat indices; ``values`` the constant per neuron; ``cells`` its sign
    cell (index into ``EDIT_CELLS``); ``cell_sizes``/``selected`` per cell after the filter.
    """

    neurons: np.ndarray
    values: np.ndarray
    cells: np.ndarray
    shape: tuple[int, int]
    alpha: float
    beta: float
    select_rule: str
    activation_quantile_filter: float | None
    n_filtered: int
    cell_sizes: dict = field(default_factory=dict)
    selected: dict = field(default_factory=dict)

    def mask(self) -> np.ndarray:
        m = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        m[self.neurons] = True
        return m.reshape(self.shape)

    def patch(self, model, *, positions: str = "all"):
        """``patch_neurons`` with this plan's neurons and constants (a context manager)."""
        if _shape(model) != self.shape:
            raise InterventionError(f"the plan is for shape {self.shape}, the model is {_shape(model)}.")
        return patch_neurons(model, self.neurons, self.values, positions=positions)

    def describe(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "select_rule": self.select_rule,
                "activation_quantile_filter": self.activation_quantile_filter,
                "n_filtered": self.n_filtered, "cell_sizes": dict(self.cell_sizes),
                "selected": dict(self.selected), "n_neurons": int(self.neurons.size),
                "selection_size": "floor(beta * cell size)"}


def _edit_inputs(attr_or_arrays):
    if hasattr(attr_or_arrays, "cos") and hasattr(attr_or_arrays, "act_base"):
        cos, act = attr_or_arrays.cos, attr_or_arrays.act_base
    elif isinstance(attr_or_arrays, dict):
        cos, act = attr_or_arrays["cos"], attr_or_arrays["act_base"]
    else:
        cos, act = attr_or_arrays
    cos, act = np.asarray(cos, dtype=np.float64), np.asarray(act, dtype=np.float64)
    if cos.ndim != 2 or cos.shape != act.shape:
        raise InterventionError(
            f"cos and act_base must be arrays of one shape [n_layers, d_mlp]; got {cos.shape} and {act.shape}.")
    if not (np.isfinite(cos).all() and np.isfinite(act).all()):
        raise InterventionError("cos or act_base contain NaN or inf.")
    return cos, act


def edit_groups(attr_or_arrays, alpha: float = 0.05, beta: float = 0.5, *, select_rule: str = "paper",
                activation_quantile_filter: float | None = None) -> EditPlan:
    """The paper's tuning-free activation edit (v3, 1(g)) from base-model quantities only.

    ``attr_or_arrays``: an Attribution, ``{"cos": ..., "act_base": ...}`` or a pair
    ``(cos, act_base)``, arrays ``[n_layers, d_mlp]``. Which direction ``cos`` is taken
    against is the caller's choice (the paper's final files used toxic_embed, A1/A16).

    1. Optional filter (the paper applies it to GPT-2 only): with
       ``activation_quantile_filter=0.8``, neurons whose ``act_base`` exceeds the 0.8 quantile
       of ``act_base`` over all neurons (numpy's linear interpolation, as pandas) are dropped
       (the code comment says "top 10%", the code drops 20%).
    2. Sign cells, strict: TP (cos>0, act>0), TN (cos>0, act<0), AP (cos<0, act>0),
       AN (cos<0, act<0); zeros belong to none.
    3. Within each cell, ``floor(beta * cell size)`` neurons (float64 arithmetic, like
       ``int(len(cell) * beta)``) are selected over all layers: the largest |cos| in TP and AN;
       in AP and TN the *smallest* |cos| under ``select_rule="paper"`` (the code's
       ``top=False``, A16) or the largest under ``"largest"``. Ties: lower flat index first.
    4. Constants: ``(1 - alpha) * act`` for TP/AN (shrink), ``(1 + alpha) * act`` for AP/TN
       (grow): each selected neuron's contribution ``act * (v . w)`` moves in the anti-toxic
       direction whenever ``v . w`` has the sign of cos.

    Defaults alpha=0.05, beta=0.5 are the notebooks'; the v3 run script used alpha=0.01,
    beta=0.55. The paper's final values are not reported.
    """
    if select_rule not in SELECT_RULES:
        raise InterventionError(f"select_rule must be one of {SELECT_RULES}, got {select_rule!r}.")
    alpha, beta = float(alpha), float(beta)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise InterventionError(f"alpha must be a finite number >= 0, got {alpha!r}.")
    if not 0.0 <= beta <= 1.0:
        raise InterventionError(f"beta must be in [0, 1], got {beta!r}.")
    q = activation_quantile_filter
    if q is not None and not 0.0 <= float(q) <= 1.0:
        raise InterventionError(f"activation_quantile_filter must be None or in [0, 1], got {q!r}.")
    cos2, act2 = _edit_inputs(attr_or_arrays)
    cos, act = cos2.ravel(), act2.ravel()
    keep = np.ones(cos.size, dtype=bool)
    if q is not None:
        keep = act <= np.quantile(act, float(q))
    n_filtered = int((~keep).sum())
    cell = np.where(cos > 0, 0, 2) + np.where(act > 0, 0, 1)  # TP=0 TN=1 AP=2 AN=3
    cell = np.where(keep & (cos != 0) & (act != 0), cell, -1)
    abscos = np.abs(cos)
    chosen, sizes, counts = [], {}, {}
    for c, name in enumerate(EDIT_CELLS):
        members = np.flatnonzero(cell == c)
        k = math.floor(beta * members.size)
        largest = _PAPER_LARGEST[c] if select_rule == "paper" else True
        key = -abscos[members] if largest else abscos[members]
        chosen.append(members[np.lexsort((members, key))[:k]])
        sizes[name], counts[name] = int(members.size), int(k)
    neurons = np.sort(np.concatenate(chosen)).astype(np.int64)
    cells = cell[neurons].astype(np.int8)
    factor = np.where(_SHRINK[cells], 1.0 - alpha, 1.0 + alpha)
    return EditPlan(neurons=neurons, values=factor * act[neurons], cells=cells, shape=cos2.shape,
                    alpha=alpha, beta=beta, select_rule=select_rule,
                    activation_quantile_filter=None if q is None else float(q),
                    n_filtered=n_filtered, cell_sizes=sizes, selected=counts)


__all__ = [
    "EDIT_CELLS", "EditPlan", "InterventionError", "NeuronRecording", "POSITIONS", "edit_groups",
    "neuron_index", "patch_neurons", "record_neurons", "scale_key_vectors", "scale_value_vectors",
    "subtract_direction",
]
