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

Modules: ``neurons`` (neuron sets, values, shared checks), ``hooks`` (patching, recording,
direction subtraction), ``weights`` (value and key vector scaling), ``editing`` (the paper's
activation edit); every public name is importable from ``mechclaims.interventions``.
"""

from ..errors import InterventionError
from .editing import EDIT_CELLS, SELECT_RULES, EditPlan, edit_groups
from .hooks import NeuronRecording, patch_neurons, record_neurons, subtract_direction
from .neurons import POSITIONS, neuron_index
from .weights import GATED_PARTS, scale_key_vectors, scale_value_vectors

__all__ = [
    "EDIT_CELLS", "GATED_PARTS", "SELECT_RULES", "EditPlan", "InterventionError", "NeuronRecording", "POSITIONS",
    "edit_groups", "neuron_index", "patch_neurons", "record_neurons", "scale_key_vectors", "scale_value_vectors",
    "subtract_direction",
]
