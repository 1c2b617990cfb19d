"""Weight interventions: value vectors (``W_out``) and key vectors (``W_in``) of chosen neurons
scaled in place; the saved slices are written back bit-exactly on exit. The bridge shares these
parameters, so both views see the edit."""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import InterventionError
from .neurons import _check_factor, _device_dtype, _per_layer, _shape, neuron_index

GATED_PARTS = ("gate", "up", "both")
_IN_NAMES = ("c_fc", "fc_in", "fc1", "dense_h_to_4h", "w1")  # non-gated MLP input layers


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
