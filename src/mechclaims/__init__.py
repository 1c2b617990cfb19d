"""mechclaims: a research finding about model internals, as an executable test.

The library is cut by concept; each module reads top to bottom:

- ``loading``      model sources -> TransformerBridge pairs, validated
- ``prompts``      prompt files -> left-padded token batches
- ``probe``        a direction in d_model: load, check, train
- ``stats``        one KV-cached greedy pass that streams per-neuron float64 sums
- ``attribution``  per-neuron projection change along the probe, the four groups
- ``cache``        content-addressed, atomic, resumable on-disk results
- ``cli``          ``mechclaims neurons ...``

Nothing here imports pytest; importing ``mechclaims`` does not import torch.
"""

__version__ = "0.1.0"
