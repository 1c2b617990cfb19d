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
from .choices import MLP_OUT_HOOK, POSITIONS_READ
from .devices import placement_key
from .loading import WEIGHT_PROCESSING, check_pair, load_model
from .probe import Probe, load_probe, probe_summary
from .prompts import prompts_sha256, read_prompts
from .provenance import display_path, now_utc, package_versions
from .sources import Source, resolve_source
from .stats import PairStats, StatsSettings, chunk_ranges, collect_pair, stack_chunks, stats_key


@dataclass
class NeuronAnalysis:
    stats: PairStats
    weights: WeightTerms
    attribution: Attribution
    summary: dict
    provenance: dict = field(default_factory=dict)
    base: object | None = None    # LoadedModel, when the models had to be loaded
    model: object | None = None
    sources: tuple | None = None  # the (base, model) Source records
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | dict | None = None  # Accelerate device map (``loading.load_model``)

    def open_models(self):
        """The (base, model) LoadedModels: the ones this analysis loaded, or loaded now from the
        same resolved records (a cached analysis loads none until something needs them)."""
        if self.base is None or self.model is None:
            b, m = self.sources
            self.base = load_model(b, device=self.device, dtype=self.dtype, memo=False, device_map=self.device_map)
            self.model = load_model(m, device=self.device, dtype=self.dtype, memo=False, device_map=self.device_map)
            check_pair(self.base, self.model)
        return self.base, self.model


WEIGHTS_VERSION = 3


def _weights_key(base: Source, model: Source, probe_sha: str, dtype: str, device: str, device_map=None) -> dict:
    # Every setting that changes a number: the weight terms are computed in the model's dtype,
    # on each layer's device.
    return {"kind": "weight-terms", "version": WEIGHTS_VERSION, "base_sha256": base.sha256,
            "model_sha256": model.sha256, "probe_sha256": probe_sha, "dtype": dtype,
            **placement_key(device, device_map)}


def analyze(base_source: "str | Source", model_source: "str | Source", probe: str | Path | Probe,
            prompts: str | Path | list[str], settings: StatsSettings = StatsSettings(), *, device: str = "cpu",
            dtype: str = "float32", cache_dir: str | Path | None | bool = True, progress: bool | None = None,
            top_k: int = 128, check_parity: bool = False, device_map: str | dict | None = None,
            auto_batch_size: bool = False) -> NeuronAnalysis:
    """Statistics, weight terms, attribution and summary for a pair.

    Sources are ``Source`` records (a claim run passes its ``RunSpec``'s) or strings, resolved
    here once. ``cache_dir``: True = the default cache dir, False/None = no cache, or a path.
    """
    from .distributed import from_writer, rank_device, setup

    par = setup(device)  # data parallel under torchrun (mechclaims.distributed); else one process
    device = rank_device(device)
    cache = ResultCache(default_cache_dir() if cache_dir is True else (cache_dir or None))
    base_src = resolve_source(base_source, memo_dir=cache.root)
    model_src = resolve_source(model_source, base=base_src, memo_dir=cache.root)
    prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else read_prompts(prompts)
    probe_obj = probe if isinstance(probe, Probe) else load_probe(probe)

    stats = wt = gated = described = None
    if cache.enabled:  # rank 0's cache decides, for every rank
        stats, wt, gated, described = from_writer((
            *_from_cache(cache, base_src, model_src, probe_obj, prompt_list, settings, dtype, device,
                        device_map),
            cache.entry(_weights_key(base_src, model_src, probe_obj.sha256, dtype, device, device_map)).load_meta()))

    base = model = None
    parity = None
    if stats is None:
        base = load_model(base_src, device=device, dtype=dtype, memo=False, device_map=device_map)
        model = load_model(model_src, device=device, dtype=dtype, memo=False, device_map=device_map)
        base_src, model_src = base.record, model.record  # a hub id fetched just now is hashed now
        check_pair(base, model)
        if auto_batch_size:  # from free memory once both models are on the device; rank 0's for all
            settings = _auto_batch(settings, base, device)
        probe_obj = probe if isinstance(probe, Probe) else load_probe(probe, d_model=base.d_model)
        if check_parity:
            from .loading import parity_check

            parity = {"base": parity_check(base), "model": parity_check(model)}
        stats = collect_pair(base, model, prompt_list, probe_obj, settings, cache=cache, progress=progress)
        wt = weight_terms(base, model, probe_obj)
        gated = base.gated
        if cache.enabled:
            entry = cache.entry(_weights_key(base_src, model_src, probe_obj.sha256, dtype, device, device_map))
            _save_weights(entry, wt, gated)
            entry.save_meta({"base": base.describe(), "model": model.describe()})

    attr = attribute(stats, wt)
    prov = {
        "created": now_utc(),
        "base": base.describe() if base else (described or {}).get("base") or {
            **base_src.describe(), "gated_mlp": gated},
        "model": model.describe() if model else (described or {}).get("model") or model_src.describe(),
        "probe": probe_summary(probe_obj),
        "prompts": {"source": display_path(prompts) if not isinstance(prompts, (list, tuple)) else "<list>",
                    "n": len(prompt_list), "sha256": prompts_sha256(prompt_list)},
        "parallel": par.describe(),
        "settings": {**settings.key(), "batch_size": settings.batch_size, "device": device,
                     "dtype": dtype, "accumulation": "float64", "decoding": "greedy, no early stop",
                     "weight_processing": WEIGHT_PROCESSING, "seeds": "none needed (greedy, deterministic)",
                     "bit_stability": BIT_STABILITY},
        "statistics": stats.provenance,
        "from_cache": base is None,
        "parity_max_abs_logit_diff": parity,
        "versions": package_versions(),
    }
    # Sources as the report shows them, whether the models were loaded or read from the cache.
    prov["base"]["source"], prov["model"]["source"] = base_src.label, model_src.label
    return NeuronAnalysis(stats, wt, attr, summarize(attr, top_k=top_k), prov, base, model,
                          (base_src, model_src), device, dtype, device_map)


# Batch size and which chunks were resumed change the order of float64 additions, so the last
# bits of a sum can differ between runs that differ only in these (measured: <= 1.4e-8 relative).
BIT_STABILITY = ("float64 sums are identical for identical settings, whatever the number of data-parallel "
                 "ranks; batch size and resumed chunks can change the last bits (<= 1.4e-8 relative)")


def _auto_batch(settings: StatsSettings, base, device: str) -> StatsSettings:
    """``settings`` with the batch size ``devices.resolve_batch_size`` picks (rank 0's)."""
    from dataclasses import replace

    from .devices import RowShape, resolve_batch_size
    from .distributed import from_writer

    bs = resolve_batch_size(None, device, RowShape.of(base), settings.max_prompt_tokens + 1, settings.max_new_tokens)
    return replace(settings, batch_size=int(from_writer(bs)))


def _from_cache(cache, base: Source, model: Source, probe, prompts, settings, dtype, device, device_map=None):
    entry = cache.entry(_weights_key(base, model, probe.sha256, dtype, device, device_map))
    w = entry.load_chunk(0)
    if w is None:
        return None, None, None
    key = stats_key(_Hashed(base.sha256, dtype, device, device_map), _Hashed(model.sha256, dtype, device, device_map),
                    probe, prompts, settings)
    sentry = cache.entry(key)
    ranges = chunk_ranges(len(prompts), settings.max_chunks)
    chunks = [sentry.load_chunk(k) for k in range(len(ranges))]
    if any(c is None for c in chunks):
        return None, None, None
    stats = PairStats(stack_chunks(chunks, "base_"), stack_chunks(chunks, "model_"), settings, ranges,
                      {"cache_key": key, "cache_digest": sentry.digest, "mlp_out_hook": MLP_OUT_HOOK,
                       "positions_read": POSITIONS_READ})
    wt = WeightTerms(**{k: np.asarray(w[k]) for k in WeightTerms.__dataclass_fields__})
    return stats, wt, bool(w["gated_mlp"])


class _Hashed:
    """What ``stats_key`` reads of a model, before any model is loaded."""

    def __init__(self, sha256, dtype, device, device_map=None):
        from .devices import device_map_text, parse_device_map

        self.sha256, self.dtype, self.device = sha256, dtype, device
        self.device_map = device_map_text(parse_device_map(device_map or None))  # as LoadedModel has it


def _save_weights(entry, wt: WeightTerms, gated: bool) -> None:
    arrays = {k: getattr(wt, k) for k in WeightTerms.__dataclass_fields__}
    entry.save_chunk(0, {**arrays, "gated_mlp": np.array(int(gated))})


def sidecar_path(out: str | Path) -> Path:
    """``neurons.csv`` -> ``neurons.json``; the table itself must not be named ``.json``."""
    from .errors import OutputPathError

    out = Path(out)
    if out.suffix.lower() == ".json":
        raise OutputPathError(f"--out {str(out)!r}: the table is CSV and its JSON sidecar would take this name; "
                              "name the table .csv (the sidecar is written beside it as .json).")
    return out.with_suffix(".json")


def check_out_path(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output (or its sidecar) that is one of the inputs, or a directory."""
    from .errors import OutputPathError

    out = Path(out).expanduser()
    targets = {out.resolve(), sidecar_path(out).resolve()}
    if out.is_dir():
        raise OutputPathError(f"--out {str(out)!r} is a directory; expected a file path such as neurons.csv.")
    for opt, p in inputs.items():
        if p and Path(str(p)).expanduser().resolve() in targets:
            raise OutputPathError(f"--out {str(out)!r} would overwrite {opt} ({p}); choose another path.")


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

    from .distributed import world

    path = Path(path)
    sidecar = sidecar_path(path)
    if not world().is_writer:  # data parallel: rank 0 writes
        return sidecar
    table = analysis.attribution.table()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cols = [table[c] for c in CSV_COLUMNS]
    fmt = [str, str] + [lambda x: repr(float(x))] * 6 + [str, str]
    for row in zip(*cols):
        writer.writerow([f(v) for f, v in zip(fmt, row)])
    atomic_write_text(path, buf.getvalue())
    atomic_write_text(sidecar, json.dumps({"columns": list(CSV_COLUMNS), "provenance": analysis.provenance,
                                           "summary": analysis.summary}, indent=2, default=str))
    return sidecar
