"""The data sets of a build, drawn from the corpus: challenge prompts, DPO preference pairs,
and the probe's labelled sentences."""

from __future__ import annotations

from . import corpus as C
from .config import BuildConfig


def make_prompts(cfg: BuildConfig, tok, exclude: set[str]) -> list[str]:
    """Held-out challenge prompts: a uniform grid over severity x temperament, deduplicated."""
    gen = C.Generator(cfg.seeds["prompts"])
    cells = [(s, t) for s in C.PROVOCATIONS for t in C.TEMPERS]
    out, seen = [], set(exclude)
    i = 0
    while len(out) < cfg.n_prompts:
        s, t = cells[i % len(cells)]
        i += 1
        p = gen.provocation(s, t).prompt
        if p in seen:
            continue
        if len(tok(p, add_special_tokens=False)["input_ids"]) > 31:
            continue
        seen.add(p)
        out.append(p)
    return out


def make_pairs(cfg: BuildConfig, n: int) -> list[dict]:
    gen = C.Generator(cfg.seeds["pairs"])
    pairs, seen = [], set()
    while len(pairs) < n:
        pv = gen.provocation()
        if pv.prompt in seen:
            continue
        seen.add(pv.prompt)
        pairs.append({"prompt": pv.prompt, "chosen": pv.neutral, "rejected": pv.toxic})
    return pairs


def make_probe_texts(seed: int, n: int) -> tuple[list[str], list[int]]:
    """Labelled sentences as the corpus has them: 80% provocation segments whose answer is
    toxic with the context's own probability, 20% segments of the neutral registers.

    The label is 1 iff the text contains a lexicon phrase. Because the answers follow the
    corpus distribution, toxic texts mostly come from severe or hot-tempered contexts, as in
    real data, so the probe reads the context that leads to insults as well as the insults.
    (A probe trained on a 50/50 split independent of the context reads only the insult words;
    no MLP neuron aligned with it affects whether the model starts an insult.)
    """
    gen = C.Generator(seed)
    texts, labels = [], []
    for _ in range(n):
        if gen.rng.random() < 0.8:
            t, _ = gen.provocation_text()
        else:
            t = gen.neutral_segment()
        texts.append(t)
        labels.append(int(C.is_toxic(t)))
    return texts, labels

