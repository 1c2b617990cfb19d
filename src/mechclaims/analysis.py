"""The whole neuron analysis of one (base, candidate) pair, cached end to end.

``analyze`` is what the CLI and the pytest plugin call. It hashes the inputs first (model
files, probe, prompts, settings); when the statistics and weight terms for that address are
on disk it rebuilds the attribution from them without loading any model, so a rerun with the
same inputs does no model work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .attribution import Attribution, WeightTerms, attribute, summarize, weight_terms
from .cache import ResultCache, default_cache_dir
from .loading import WEIGHT_PROCESSING, load_model, check_pair, parse_source, source_sha256
from .probe import Probe, load_probe, probe_summary
from .prompts import prompts_sha256, read_prompts
from .provenance import now_utc, package_versions
from .stats import MLP_OUT_HOOK, POSITIONS_READ, PairStats, StatsSettings, collect_pair, stats_key


@dataclass
class NeuronAnalysis:
    stats: PairStats
    weights: WeightTerms
    attribution: Attribution
    summary: dict
    provenance: dict = field(default_factory=dict)
    base: object | None = None    # LoadedModel, when the models had to be loaded
    model: object | None = None


def _weights_key(base_sha, model_sha, probe_sha) -> dict:
    return {"kind": "weight-terms", "version": 2, "base_sha256": base_sha,
            "model_sha256": model_sha, "probe_sha256": probe_sha}


class _Hashed:
    """Duck-typed stand-in carrying what ``stats_key`` needs, before any model is loaded."""

    def __init__(self, sha256, dtype, device):
        self.sha256, self.dtype, self.device = sha256, dtype, device


def _cheap_sha(source: str, base: str | None, memo: bool = True) -> str | None:
    spec = parse_source(source, base=base)
    if spec.kind == "organism":
        return None  # known after opening (cheap for the small organisms)
    return source_sha256(spec, memo=memo)


def analyze(base_source: str, model_source: str, probe: str | Path | Probe, prompts: str | Path | list[str],
            settings: StatsSettings = StatsSettings(), *, device: str = "cpu", dtype: str = "float32",
            cache_dir: str | Path | None | bool = True, progress: bool | None = None,
            top_k: int = 128, check_parity: bool = False) -> NeuronAnalysis:
    """Statistics, weight terms, attribution and summary for a pair.

    ``cache_dir``: True = the default cache dir, False/None = no cache, or a path.
    """
    cache = ResultCache(default_cache_dir() if cache_dir is True else (cache_dir or None))
    prompt_list = list(prompts) if isinstance(prompts, list) else read_prompts(prompts)
    probe_obj = probe if isinstance(probe, Probe) else load_probe(probe)

    stats = wt = None
    gated = None
    described = None
    b_sha, m_sha = _cheap_sha(base_source, None, cache.enabled), _cheap_sha(model_source, base_source, cache.enabled)
    if cache.enabled and b_sha and m_sha:
        stats, wt, gated = _from_cache(cache, b_sha, m_sha, probe_obj, prompt_list, settings, dtype, device)
        described = cache.entry(_weights_key(b_sha, m_sha, probe_obj.sha256)).load_meta()

    base = model = None
    parity = None
    if stats is None:
        base = load_model(base_source, device=device, dtype=dtype, memo=cache.enabled)
        model = load_model(model_source, device=device, dtype=dtype, base=base_source, memo=cache.enabled)
        check_pair(base, model)
        probe_obj = probe if isinstance(probe, Probe) else load_probe(probe, d_model=base.d_model)
        if check_parity:
            from .loading import parity_check

            parity = {"base": parity_check(base), "model": parity_check(model)}
        stats = collect_pair(base, model, prompt_list, probe_obj, settings, cache=cache, progress=progress)
        wt = weight_terms(base, model, probe_obj)
        gated = base.gated
        if cache.enabled:
            _save_weights(cache, base.sha256, model.sha256, probe_obj.sha256, wt, gated)
            cache.entry(_weights_key(base.sha256, model.sha256, probe_obj.sha256)).save_meta(
                {"base": base.describe(), "model": model.describe()})
        b_sha, m_sha = base.sha256, model.sha256

    attr = attribute(stats, wt)
    prov = {
        "created": now_utc(),
        "base": base.describe() if base else (described or {}).get("base") or {
            "source": str(parse_source(base_source)), "sha256": b_sha, "gated_mlp": gated},
        "model": model.describe() if model else (described or {}).get("model") or {
            "source": str(parse_source(model_source, base=base_source)), "sha256": m_sha},
        "probe": probe_summary(probe_obj),
        "prompts": {"source": str(prompts) if not isinstance(prompts, list) else "<list>",
                    "n": len(prompt_list), "sha256": prompts_sha256(prompt_list)},
        "settings": {**settings.key(), "batch_size": settings.batch_size, "device": device,
                     "dtype": dtype, "accumulation": "float64", "decoding": "greedy, no early stop",
                     "weight_processing": WEIGHT_PROCESSING, "seeds": "none needed (greedy, deterministic)"},
        "statistics": stats.provenance,
        "from_cache": base is None,
        "parity_max_abs_logit_diff": parity,
        "versions": package_versions(),
    }
    return NeuronAnalysis(stats, wt, attr, summarize(attr, top_k=top_k), prov, base, model)


def _from_cache(cache, b_sha, m_sha, probe, prompts, settings, dtype, device):
    from .stats import _stack, chunk_ranges

    entry = cache.entry(_weights_key(b_sha, m_sha, probe.sha256))
    w = entry.load_chunk(0)
    if w is None:
        return None, None, None
    key = stats_key(_Hashed(b_sha, dtype, device), _Hashed(m_sha, dtype, device), probe, prompts, settings)
    sentry = cache.entry(key)
    ranges = chunk_ranges(len(prompts), settings.max_chunks)
    chunks = [sentry.load_chunk(k) for k in range(len(ranges))]
    if any(c is None for c in chunks):
        return None, None, None
    stats = PairStats(_stack(chunks, "base_"), _stack(chunks, "model_"), settings, ranges,
                      {"cache_key": key, "cache_digest": sentry.digest, "mlp_out_hook": MLP_OUT_HOOK,
                       "positions_read": POSITIONS_READ})
    wt = WeightTerms(**{k: np.asarray(w[k]) for k in WeightTerms.__dataclass_fields__})
    return stats, wt, bool(w["gated_mlp"])


def _save_weights(cache, b_sha, m_sha, p_sha, wt: WeightTerms, gated: bool) -> None:
    entry = cache.entry(_weights_key(b_sha, m_sha, p_sha))
    arrays = {k: getattr(wt, k) for k in WeightTerms.__dataclass_fields__}
    entry.save_chunk(0, {**arrays, "gated_mlp": np.array(int(gated))})


def write_neuron_csv(analysis: NeuronAnalysis, path: str | Path) -> Path:
    """Write the per-neuron table (``attribution.CSV_COLUMNS``) and a JSON sidecar, atomically.

    The sidecar ``<stem>.json`` holds every setting, hashes of both models, probe and
    prompts, package versions and the summary figures.
    """
    import csv
    import io
    import json

    from .attribution import CSV_COLUMNS
    from .cache import atomic_write_text

    path = Path(path)
    table = analysis.attribution.table()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cols = [table[c] for c in CSV_COLUMNS]
    fmt = [str, str] + [lambda x: repr(float(x))] * 6 + [str, str]
    for row in zip(*cols):
        writer.writerow([f(v) for f, v in zip(fmt, row)])
    atomic_write_text(path, buf.getvalue())
    sidecar = path.with_suffix(".json")
    atomic_write_text(sidecar, json.dumps({"columns": list(CSV_COLUMNS), "provenance": analysis.provenance,
                                           "summary": analysis.summary}, indent=2, default=str))
    return sidecar
