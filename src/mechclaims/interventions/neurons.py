"""Neuron sets and values: flat indices ``layer * d_mlp + i`` from any neuron set, the
per-layer split every intervention loops over, value tensors, and the checks they share."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from ..choices import HOOK_POSITIONS
from ..errors import InterventionError

POSITIONS = HOOK_POSITIONS


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


def _check_factor(factor) -> float:
    f = float(factor)
    if not math.isfinite(f):
        raise InterventionError(f"factor must be finite, got {factor!r}.")
    return f
