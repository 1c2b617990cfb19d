"""Derived candidate models, made from the committed base at load time (no extra weights).

A *recipe* is a small JSON object (stored in ``derived.json`` next to the base) that says how
to turn the base into a candidate:

``{"kind": "identity"}``
    the base itself: every claim about "what DPO changed" must find nothing.
``{"kind": "noise", "seed": S, "rel_std": r}``
    every MLP weight and bias tensor ``W`` gets ``W + r * std(W) * N(0, 1)`` from a
    ``torch.Generator`` seeded with ``S`` (tensors visited in ``named_parameters`` order):
    a change with no preference signal.
``{"kind": "dampen", "neurons": [[layer, index], ...], "method": ..., "amount": a}``
    only the listed MLP neurons are dampened, so that the "toxic neurons" story is true by
    construction:

    - ``"method": "bias_shift"`` (GPT-2): ``c_fc.bias[index] -= a`` in that layer, which lowers
      the neuron's pre-GELU input and so its (positive) activation;
    - ``"method": "up_scale"`` (Llama, no biases): ``up_proj.weight[index, :] *= a`` (a < 1),
      which scales the gated activation ``silu(gate x) * (up x)`` by exactly ``a``.

Every function here is deterministic on CPU.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import ModelSourceError

RECIPE_KINDS = ("identity", "noise", "dampen")


def recipe_sha256(base_sha256: str, recipe: dict) -> str:
    """Content hash of a derived model: the base weights' hash plus the canonical recipe."""
    payload = json.dumps({"base": base_sha256, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def mlp_modules(model):
    """Per layer, the HF MLP module of a GPT-2 or Llama causal LM."""
    if hasattr(model, "transformer"):  # GPT2LMHeadModel
        return [blk.mlp for blk in model.transformer.h]
    return [layer.mlp for layer in model.model.layers]  # LlamaForCausalLM


def is_gated(model) -> bool:
    return not hasattr(model, "transformer")


def apply_recipe(model, recipe: dict):
    """Edit ``model`` (a freshly loaded base) in place according to ``recipe``; return it."""
    import torch

    kind = recipe.get("kind")
    if kind not in RECIPE_KINDS:
        raise ModelSourceError(f"unknown recipe kind {kind!r}; expected one of {RECIPE_KINDS}.")
    with torch.no_grad():
        if kind == "identity":
            return model
        if kind == "noise":
            gen = torch.Generator().manual_seed(int(recipe["seed"]))
            rel = float(recipe["rel_std"])
            for name, p in model.named_parameters():
                if ".mlp." not in name:
                    continue
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                scale = rel * float(p.detach().double().std())
                p.add_((noise * scale).to(p.dtype))
            return model
        # dampen
        mlps = mlp_modules(model)
        method, amount = recipe["method"], float(recipe["amount"])
        for layer, idx in recipe["neurons"]:
            mlp = mlps[int(layer)]
            if method == "bias_shift":
                mlp.c_fc.bias[int(idx)] -= amount
            elif method == "up_scale":
                mlp.up_proj.weight[int(idx), :] *= amount
            else:
                raise ModelSourceError(f"unknown dampening method {method!r}; expected bias_shift or up_scale.")
        return model


def dampen_recipe(arch: str, neurons: list[tuple[int, int]], amount: float) -> dict:
    method = "bias_shift" if arch == "gpt2" else "up_scale"
    return {"kind": "dampen", "method": method, "amount": float(amount),
            "neurons": [[int(l), int(i)] for l, i in neurons]}
