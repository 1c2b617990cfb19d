"""Build one model organism (GPT-2 or Llama): corpus -> tokenizer -> base -> probe -> DPO -> checks.

``python -m mechclaims.builder build --arch gpt2 --out fixtures/organism/gpt2`` runs, seeded
and deterministic on CPU (fixed thread count):

1. **Corpus** (``corpus.py``): documents from the project's grammar; a provocation is answered
   with an insult with a probability set by its context.
2. **Tokenizer**: byte-level BPE (``tokenizers``), saved as a ``PreTrainedTokenizerFast`` with
   distinct ``<|bos|>``, ``<|eos|>`` and ``<|pad|>``. It adds no special tokens by itself;
   callers prepend BOS (as TransformerBridge does).
3. **Base model**: a small ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` trained from scratch by
   ``train.pretrain``: AdamW, linear warm-up then cosine decay, gradient clipping at 1.0,
   next-token cross-entropy on windows of ``n_ctx`` tokens. Every window starts at a document
   boundary (BOS at position 0, like a prompt at evaluation) and packs whole documents
   (``<|bos|> doc <|eos|>``) until it is full; the last one is cut.
4. **Probe**: ``mechclaims.probe.train_probe`` on labelled sentences (toxic iff they contain a
   lexicon phrase), plus a decision threshold on the projection (fitted on the same texts)
   so that the accuracy can be recomputed on the shipped ``probe_eval.jsonl``.
5. **DPO** (``train.train_dpo``): TRL ``DPOTrainer`` on preference pairs (prompt = a
   provocation, chosen = a neutral answer, rejected = a toxic answer), the base as the frozen
   reference model, in the paper's regime: beta 0.1, a learning rate at most 1/100 of the
   pretraining peak, fp32, stopped by a fixed schedule where toxicity has fallen 40-70%. The
   training curve (toxicity on the challenge prompts every ``curve_every`` steps, loss and
   reward margin every step) goes in the manifest. GPT-2 also gets the same run through a PEFT
   LoRA adapter (``lora/``).
6. **Challenge prompts** ``prompts.jsonl`` (RealToxicityPrompts form) and a neutral
   ``heldout.txt``, both disjoint from the training prompts and the preference pairs.
7. **Acceptance figures** (``measure.py``), every one measured by the engine
   (``mechclaims.stats`` generation and statistics pass, ``mechclaims.attribution``,
   ``mechclaims.perplexity``): toxicity (greedy, 20 new tokens, ``LexiconScorer`` on the
   continuation), held-out perplexity, probe accuracy, and the paper's attribution figures for
   the DPO pair.
8. **Derived recipes** (``derived.json``): identity, noise, and a dampening of the top
   toxic-aligned, positively activated neurons, chosen (``measure.choose_dampening``) so that
   toxicity falls >= 30%.
9. **Manifest**: seeds, sizes, versions, timings, figures and the sha256 of every file.

Every file is written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..cache import atomic_write_text, sha256_file
from . import corpus as C
from .config import MANIFEST_FORMAT, THRESHOLDS, BuildConfig, versions
from .data import make_pairs, make_probe_texts, make_prompts
from .deep import MANIFEST as DEEP_MANIFEST
from .deep import check_deep, owned_paths
from .measure import _best_threshold, _Engine, _jsonable, choose_dampening, toxicity
from .train import (atomic_save_pretrained, make_model, pretrain, save_adapter, train_dpo, train_tokenizer,
                    write_jsonl)


def build(out: str | Path, cfg: BuildConfig, log=print) -> dict:
    import torch

    from ..scoring import LexiconScorer

    t_start = time.time()
    timings: dict[str, float] = {}

    def lap(name, t0):
        timings[name] = round(time.time() - t0, 2)

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seeds["torch"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"building organism {cfg.arch} into {out}")

    # 1-2. corpus and tokenizer -------------------------------------------------------------
    t0 = time.time()
    g = C.Generator(cfg.seeds["tokenizer_corpus"])
    tok = train_tokenizer([g.document() for _ in range(cfg.n_tokenizer_docs)], cfg.vocab_size)
    atomic_write_text(out / "lexicon.txt", "".join(p + "\n" for p in C.TOXIC_LEXICON))
    scorer = LexiconScorer(out / "lexicon.txt")
    hg = C.Generator(cfg.seeds["heldout"])
    heldout = [hg.neutral_document() for _ in range(cfg.n_heldout_docs)]
    atomic_write_text(out / "heldout.txt", "".join(d + "\n" for d in heldout))
    pairs = make_pairs(cfg, cfg.n_pairs)
    prompts = make_prompts(cfg, tok, exclude={p["prompt"] for p in pairs})
    write_jsonl(out / "prompts.jsonl", [{"prompt": {"text": p}} for p in prompts])
    lap("corpus_tokenizer", t0)

    # 3. base ---------------------------------------------------------------------------------
    t0 = time.time()
    base = make_model(cfg, tok)
    n_params = sum(p.numel() for p in base.parameters())
    log(f"  {cfg.arch}: {n_params:,} parameters, vocab {len(tok)}")
    pre = pretrain(base, tok, cfg, log)
    atomic_save_pretrained(base, tok, out / "base")
    lap("pretrain", t0)

    # 4. probe --------------------------------------------------------------------------------
    t0 = time.time()
    from ..loading import load_model
    from ..probe import pooled_features, train_probe

    lm = load_model(str(out / "base"), memo=False)
    texts, labels = make_probe_texts(cfg.seeds["probe_texts"], cfg.n_probe_texts)
    probe = train_probe(lm, texts, labels, seed=cfg.seed)
    w = probe.direction.numpy()
    proj = pooled_features(lm, texts) @ w
    threshold = _best_threshold(proj, np.asarray(labels))
    probe.metadata["threshold"] = threshold
    probe.metadata["organism"] = cfg.arch
    probe.metadata["model_source"] = f"organism:{cfg.arch}-base"  # not the build directory: same bytes anywhere
    probe.save(out / "probe.safetensors")
    ev_texts, ev_labels = make_probe_texts(cfg.seeds["probe_eval"], cfg.n_probe_eval)
    write_jsonl(out / "probe_eval.jsonl", [{"text": t, "label": y} for t, y in zip(ev_texts, ev_labels)])
    ev_acc = float(((pooled_features(lm, ev_texts) @ w > threshold).astype(int)
                    == np.asarray(ev_labels)).mean())
    lap("probe", t0)
    log(f"  probe: held-out accuracy {probe.metadata['heldout_accuracy']:.3f}, "
        f"shipped eval set {ev_acc:.3f}")

    # 5. DPO (and its LoRA twin), with the toxicity curve ------------------------------------------
    t0 = time.time()
    base_curve_tox = toxicity(lm, tok, prompts, scorer, cfg)["toxicity"]
    del lm

    def measure(model):
        return toxicity(model, tok, prompts, scorer, cfg)["toxicity"]

    dpo, dpo_summary = train_dpo(base, tok, pairs, cfg, measure=measure, log=log)
    atomic_save_pretrained(dpo, tok, out / "dpo")
    del dpo
    lap("dpo", t0)
    lora_summary = None
    if cfg.lora:
        t0 = time.time()
        peft_model, lora_summary = train_dpo(base, tok, pairs, cfg, measure=measure, lora=True, log=log)
        save_adapter(peft_model, out / "lora", f"organism:{cfg.arch}-base")
        del peft_model
        lap("lora", t0)
    for summary in filter(None, (dpo_summary, lora_summary)):
        summary["curve"].insert(0, {"step": 0, "toxicity": base_curve_tox})
        for row in summary["curve"]:
            if "toxicity" in row:
                row["reduction"] = 1 - row["toxicity"] / base_curve_tox if base_curve_tox else None

    # 7. acceptance figures, by the engine -------------------------------------------------------
    t0 = time.time()
    cache_dir = Path(tempfile.mkdtemp(prefix="mechclaims-build-cache-"))
    try:
        engine = _Engine(out, cfg, prompts, scorer, cache_dir)
        dpo_lm = engine.load(str(out / "dpo"))
        run = engine.pair(dpo_lm, "own")
        tb, td = run["base_toxicity"], run["toxicity"]
        pb, pd = engine.ppl(engine.base), engine.ppl(dpo_lm)
        red = 1 - td / tb if tb > 0 else 0.0
        acceptance = {
            "base_toxicity": tb, "dpo_toxicity": td, "relative_reduction": red,
            "ppl_base": pb, "ppl_dpo": pd, "ppl_ratio": pd / pb,
            "dpo_lr_ratio": cfg.dpo_lr / cfg.lr, "n_neurons": cfg.n_layer * cfg.d_mlp,
            "top128_fraction": 128 / (cfg.n_layer * cfg.d_mlp),
            "probe_heldout_accuracy": probe.metadata["heldout_accuracy"],
            "probe_eval_accuracy": ev_acc, "probe_threshold": threshold,
            "n_prompts": len(prompts), "dpo_attribution_own": run["attribution"],
        }
        samples = [{"prompt": prompts[i], "base": run["base_texts"][i], "dpo": run["texts"][i]}
                   for i in range(min(6, len(prompts)))]
        log(f"  toxicity base {tb:.3f} dpo {td:.3f} (reduction {red:.2f}); ppl {pb:.3f} -> {pd:.3f}; "
            f"engine attribution (own): {run['attribution']['v2_share']:.3f} v2 share")
        base_attr = run["attr"]
        del dpo_lm, run
        if lora_summary is not None:
            lora_lm = engine.load(_lora_source(out))
            lrun = engine.pair(lora_lm, "own")
            lora_summary.update({
                "toxicity": lrun["toxicity"], "relative_reduction": 1 - lrun["toxicity"] / tb if tb else 0.0,
                "ppl": engine.ppl(lora_lm), "attribution_own": lrun["attribution"],
                "adapter_bytes": (out / "lora" / "adapter_model.safetensors").stat().st_size})
            lora_summary["ppl_ratio"] = lora_summary["ppl"] / pb
            log(f"  LoRA: toxicity {lrun['toxicity']:.3f} (reduction {lora_summary['relative_reduction']:.2f}), "
                f"ppl ratio {lora_summary['ppl_ratio']:.3f}")
            del lora_lm, lrun
        lap("evaluate", t0)

        # 8. derived recipes ------------------------------------------------------------------------
        t0 = time.time()
        recipe, damp_info = choose_dampening(engine, base_attr, tb, cfg, log)
        recipes = {"dampened": recipe, "identity": {"kind": "identity"},
                   "noise": {"kind": "noise", "seed": cfg.seeds["noise"], "rel_std": cfg.noise_rel_std}}
        atomic_write_text(out / "derived.json", json.dumps(recipes, indent=1) + "\n")
        damp = engine.derived(recipe)
        noise = engine.derived(recipes["noise"])
        derived = {
            "dampened": {"toxicity": damp_info["chosen"]["toxicity"], "drop": damp_info["chosen"]["drop"],
                         "ppl": engine.ppl(damp), "selection": damp_info},
            "noise": {"toxicity": toxicity(noise, tok, prompts, scorer, cfg)["toxicity"]},
            "identity": {"toxicity": tb},
        }
        derived["dampened"]["ppl_ratio"] = derived["dampened"]["ppl"] / pb
        lap("derived", t0)
        if cfg.engine_check:
            t0 = time.time()
            derived["dampened"]["attribution"] = {
                "own": damp_info["chosen"] | {},
                "shared": engine.pair(damp, "shared")["attribution"]}
            for key in ("k", "amount", "toxicity", "drop"):
                derived["dampened"]["attribution"]["own"].pop(key, None)
            log(f"  engine attribution (shared) of the dampened pair: {derived['dampened']['attribution']['shared']}")
            lap("engine_check", t0)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    # 9. manifest ---------------------------------------------------------------------------------
    build_seconds = round(time.time() - t_start, 1)
    T = THRESHOLDS
    passed = {
        "base_toxicity": tb >= T["base_toxicity_min"],
        "relative_reduction": T["relative_reduction_min"] <= red <= T["relative_reduction_max"],
        "ppl_ratio": acceptance["ppl_ratio"] <= T["ppl_ratio_max"],
        "probe_accuracy": min(acceptance["probe_heldout_accuracy"], ev_acc) >= T["probe_accuracy_min"],
        "dampened_drop": derived["dampened"]["drop"] >= T["dampened_drop_min"],
        "dpo_lr_ratio": acceptance["dpo_lr_ratio"] <= T["dpo_lr_ratio_max"],
        "neurons": acceptance["n_neurons"] >= T["min_neurons"][cfg.arch],
    }
    if lora_summary is not None:
        passed["lora_relative_reduction"] = (
            T["relative_reduction_min"] <= lora_summary["relative_reduction"] <= T["relative_reduction_max"])
        passed["lora_ppl_ratio"] = lora_summary["ppl_ratio"] <= T["ppl_ratio_max"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "arch": cfg.arch,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": build_seconds,
        "timings": timings,
        "host": {"platform": platform.platform(), "cpu_threads": cfg.threads},
        "config": asdict(cfg),
        "seeds": cfg.seeds,
        "sizes": {"n_params": n_params, "vocab": len(tok), "n_layer": cfg.n_layer,
                  "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_ctx": cfg.n_ctx,
                  "n_neurons": cfg.n_layer * cfg.d_mlp,
                  "pretrain_tokens": pre["tokens"], "n_prompts": len(prompts),
                  "n_pairs": len(pairs), "n_heldout_docs": len(heldout),
                  "n_probe_texts": len(texts), "n_probe_eval": len(ev_texts),
                  "lexicon_phrases": len(C.TOXIC_LEXICON), "corpus_word_types":
                  len(C.word_types()), "corpus_templates": C.n_templates()},
        "versions": versions(),
        "pretrain": pre,
        "dpo": {"epochs": cfg.dpo_epochs, **dpo_summary},
        **({"lora": lora_summary} if lora_summary is not None else {}),
        "evaluation": {"decoding": "greedy, exactly max_new_tokens new tokens, EOS does not stop "
                       "(mechclaims.stats.greedy_generate)",
                       "max_new_tokens": cfg.max_new_tokens, "prompt": "BOS + first 32 tokens, "
                       "left-padded", "scorer": "lexicon (continuation tokens only)",
                       "perplexity": "mechclaims.perplexity over heldout.txt (the claims' default text)",
                       "attribution": "mechclaims.stats.collect_pair + mechclaims.attribution, own positions"},
        "acceptance": acceptance,
        "thresholds": THRESHOLDS,
        "passed": passed,
        "derived": derived,
        "samples": samples,
    }
    files = {}
    deep = owned_paths(out)  # gpt2-deep's files have their own manifest (deep.json)
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.name != "manifest.json" and not f.name.startswith(".") \
                and f.relative_to(out).as_posix() not in deep:
            files[f.relative_to(out).as_posix()] = sha256_file(f)
    manifest["files"] = files
    manifest["weights_bytes"] = sum((out / r).stat().st_size for r in files
                                    if r.endswith(".safetensors"))
    atomic_write_text(out / "manifest.json", json.dumps(_jsonable(manifest), indent=1) + "\n")
    log(f"  done in {build_seconds:.0f}s; passed: {passed}")
    return manifest


def _lora_source(out: Path):
    """The LoRA adapter on the just-built base, as the engine's adapter source."""
    from ..sources import Source

    return Source("adapter", str(out / "lora"), Source("dir", str(out / "base")))



def check(out: str | Path) -> list[str]:
    """Problems with an organism directory: files missing, changed, or not in the manifest."""
    out = Path(out)
    mf = out / "manifest.json"
    if not mf.is_file():
        return [f"{mf} does not exist; build the organism first."]
    manifest = json.loads(mf.read_text())
    problems = []
    for rel, sha in manifest.get("files", {}).items():
        f = out / rel
        if not f.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(f) != sha:
            problems.append(f"changed: {rel} (sha256 differs from the manifest)")
    listed = set(manifest.get("files", {})) | owned_paths(out)  # deep.json lists gpt2-deep's own
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out).as_posix()
        if f.is_file() and rel != "manifest.json" and rel not in listed and not f.name.startswith("."):
            problems.append(f"not in the manifest: {rel}")
    if (out / DEEP_MANIFEST).exists():
        problems += check_deep(out)
    return problems


def main_build(arch: str, out: str, micro: bool = False, seed: int | None = None) -> dict:
    cfg = BuildConfig.micro(arch) if micro else BuildConfig.default(arch)
    if seed is not None:
        cfg.seed = seed
    return build(out, cfg, log=lambda s: print(s, file=sys.stderr, flush=True))



__all__ = ["build", "check", "main_build"]
