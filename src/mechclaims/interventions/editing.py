"""The paper's tuning-free activation edit (v3, 1(g)): ``edit_groups`` chooses neurons and
constants from base-model quantities only; ``EditPlan.patch`` applies them with
``patch_neurons``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..choices import CELLS
from ..errors import InterventionError
from .hooks import patch_neurons
from .neurons import _shape

SELECT_RULES = ("paper", "largest")
EDIT_CELLS = CELLS                          # codes 0..3, as attribution's sign cells
_SHRINK = np.array([True, False, False, True])  # TP, AN shrink; TN, AP grow
_PAPER_LARGEST = np.array([True, False, False, True])  # paper: largest |cos| in TP, AN only


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
