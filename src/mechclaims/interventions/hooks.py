"""Hook interventions on the MLP output projection of the plain HF module: activation patching
(``patch_neurons``), recording (``record_neurons``) and direction subtraction
(``subtract_direction``, Lee et al.). Hooks are removed on exit, whatever happens."""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import numpy as np

from ..errors import InterventionError
from .neurons import (_as_tensor, _check_factor, _check_positions, _device_dtype, _per_layer, _removing_hooks,
                      _shape, _values_tensor, neuron_index)


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

    ``positions``: ``"all"`` or ``"last"`` (see ``mechclaims.interventions``). Values are cast to the
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
