"""Measurements: every figure the builder records comes from the engine (``mechclaims.stats``,
``attribution``, ``perplexity``, ``scoring``, ``loading``); nothing here measures by itself.
Also the choice of the dampened organism's recipe, made by those measurements."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from .config import BuildConfig


def eval_settings(cfg: BuildConfig, positions: str = "own"):
    """The statistics and generation settings of every measurement (the claims' defaults:
    greedy, ``max_new_tokens`` tokens, prompts cut to 32 tokens, BOS prepended)."""
    from ..stats import StatsSettings

    return StatsSettings(positions=positions, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.eval_batch_size)


def score_continuations(tok, cont, scorer) -> dict:
    """Toxicity of continuation tokens ``[n, T]`` (``mechclaims.scoring``)."""
    from ..scoring import decode_continuations

    texts = decode_continuations(tok, cont)
    scores = scorer.score(texts)
    return {"toxicity": float(scores.mean()), "scores": scores, "texts": texts}


def toxicity(model, tok, prompts: list[str], scorer, cfg: BuildConfig) -> dict:
    """Greedy continuations with the engine's generation (``mechclaims.stats.continuations``)
    scored by ``scorer``; ``model`` is a LoadedModel or a plain HF causal LM (a policy while
    it trains). The organisms' tokenizers have a BOS, which the engine prepends."""
    from ..stats import continuations

    return score_continuations(tok, continuations(model, tok, prompts, eval_settings(cfg)), scorer)


# --------------------------------------------------------------------------------------------
# Derived: choosing the dampening recipe


def choose_dampening(engine: "_Engine", base_attr, base_tox: float, cfg: BuildConfig,
                     log=print) -> tuple[dict, dict]:
    """The smallest k such that dampening the top-k neurons (by cos(v, w) over all layers, ties
    by index, among those of the last ``dampen_layers`` layers with cos > 0 and base mean
    activation > 0 at the generated positions) lowers toxicity by ``dampen_target``.

    Every trial is one engine statistics pass (own mode) of the dampened candidate against the
    base, whose own statistics are read from the build's cache: the same pass gives the
    candidate's toxicity and the paper's shares, which are recorded.
    """
    from ..attribution import top_k_by_cos
    from ..organism.derived import dampen_recipe

    cos, act = base_attr.cos, base_attr.act_base
    L, D = cos.shape
    layers = list(range(L - (cfg.dampen_layers or L), L))
    order = top_k_by_cos(cos, cos.size)
    ok = ((cos > 0) & (act > 0)).ravel() & np.isin(np.arange(cos.size) // D, layers)
    cand = [(int(f // D), int(f % D)) for f in order if ok[f]]
    amount = cfg.dampen_amount if cfg.dampen_amount is not None else (
        4.0 if cfg.arch == "gpt2" else 0.2)
    ks = [k for k in (8, 16, 32, 64, 96, 128, 192, 256) if k < len(cand)] + [len(cand)]
    tried, chosen = [], None
    for k in ks[:cfg.dampen_max_trials]:
        recipe = dampen_recipe(cfg.arch, cand[:k], amount)
        run = engine.pair(engine.derived(recipe), "own")
        drop = 1 - run["toxicity"] / base_tox if base_tox else 0.0
        row = {"k": k, "amount": amount, "toxicity": run["toxicity"], "drop": drop,
               **run["attribution"]}
        tried.append(row)
        log(f"  dampen k={k:3d} amount={amount} toxicity {run['toxicity']:.3f} drop {drop:.2f} "
            f"v2 {row['v2_share']:.2f} TP- {row['tp_minus_share']:.2f}")
        chosen = (recipe, row)
        if drop >= cfg.dampen_target:
            break
    recipe, row = chosen
    info = {"chosen": row, "candidates": len(cand), "layers": layers, "tried": tried,
            "base_mean_act_positive": int((act > 0).sum()),
            "rule": "smallest k in 8, 16, 32, 64, 96, 128, 192, 256, all reaching the target drop "
            "(else the last tried); neurons ranked by cos(v, w) over all layers, ties by index"}
    return recipe, info


class _Engine:
    """The engine's measures on models of one build: statistics pass, attribution, toxicity of
    the continuations, perplexity. The base's own-mode statistics are cached once (in a
    temporary cache directory) and reused for every candidate."""

    def __init__(self, out: Path, cfg: BuildConfig, prompts, scorer, cache_dir: Path):
        from ..cache import ResultCache
        from ..loading import load_model
        from ..probe import load_probe

        self.out, self.cfg, self.prompts, self.scorer = out, cfg, prompts, scorer
        self.cache = ResultCache(cache_dir)
        self.base = load_model(str(out / "base"), memo=False)
        self.probe = load_probe(out / "probe.safetensors", d_model=self.base.d_model)

    def load(self, source):
        from ..loading import load_model

        return load_model(source, memo=False)

    def derived(self, recipe: dict):
        """A LoadedModel of the base edited by ``recipe`` (``derived.apply_recipe``)."""
        from ..loading import wrap_hf
        from ..sources import Source
        from ..organism.derived import apply_recipe, recipe_sha256

        hf = apply_recipe(copy.deepcopy(self.base.hf_model), recipe)
        return wrap_hf(hf, self.base.tokenizer,
                       Source("dir", f"{self.cfg.arch}-{recipe['kind']}",
                              sha256=recipe_sha256(self.base.sha256, recipe)))

    def pair(self, model, positions: str = "own") -> dict:
        """Statistics pass of (base, model): toxicities of both continuations and the paper's
        attribution figures (``attribution.summarize``)."""
        from .. import attribution, stats

        ps = stats.collect_pair(self.base, model, self.prompts, self.probe,
                                eval_settings(self.cfg, positions), cache=self.cache, progress=False)
        att = attribution.attribute(ps, attribution.weight_terms(self.base, model, self.probe))
        tok = self.base.tokenizer
        m = score_continuations(tok, ps.model.continuations, self.scorer)
        b = score_continuations(tok, ps.base.continuations, self.scorer)
        return {"toxicity": m["toxicity"], "base_toxicity": b["toxicity"], "texts": m["texts"],
                "base_texts": b["texts"], "attr": att,
                "attribution": summarise_attribution(attribution.summarize(att))}

    def ppl(self, model) -> float:
        from ..perplexity import perplexity

        return perplexity(model, self.out / "heldout.txt")["ppl"]



def _best_threshold(proj, labels) -> float:
    order = np.sort(proj)
    cuts = np.concatenate([[order[0] - 1], (order[1:] + order[:-1]) / 2, [order[-1] + 1]])
    accs = [((proj > c).astype(int) == labels).mean() for c in cuts]
    return float(cuts[int(np.argmax(accs))])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summarise_attribution(summary: dict) -> dict:
    """The figures the dampened pair is chosen for, from ``attribution.summarize``."""
    v2 = summary["toxic_neurons_v2"]
    return _jsonable({
        "v2_share": v2["share"], "v2_n_selected": v2["n_selected"],
        "tp_minus_share": summary["group_a_share"]["TP-"],
        "group_a_share": summary["group_a_share"], "group_b_share": summary["group_b_share"],
        "net": summary["net"], "gross_reduction": summary["gross_reduction"],
    })

