"""A claim run: the analysis once, every claim's metric with a paired bootstrap, verdicts.

Confidence intervals come from a bootstrap over prompt chunks: each resample draws K chunks
with replacement (multinomial weights), and the *same* weights reweight both models' per-chunk
sums, so the interval is paired across the two models. The 95% interval is the 2.5th-97.5th
percentile of the resampled metric. A claim whose interval straddles its threshold is marked
*unstable*. The verdict uses the point estimate, or under ``strict`` the pessimistic end of the
interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .claim import Check, ClaimContext, ClaimSpec
from .config import ClaimsConfig, ConfigError


@dataclass
class CheckResult:
    check: Check
    value: float
    lo: float
    hi: float
    holds: bool          # at the point estimate
    holds_strict: bool   # at the pessimistic interval end
    unstable: bool       # the interval straddles the threshold

    def as_dict(self) -> dict:
        c = self.check
        return {"name": c.name, "label": c.label or c.name, "op": c.op, "threshold": c.threshold,
                "value": self.value, "ci": [self.lo, self.hi], "holds": self.holds,
                "holds_strict": self.holds_strict, "unstable": self.unstable}


@dataclass
class ClaimResult:
    spec: ClaimSpec
    status: str                      # pass | fail | skip
    reason: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # extra metric values with intervals
    strict: bool = False                         # verdicts from the interval's pessimistic end

    @property
    def unstable(self) -> bool:
        return any(c.unstable for c in self.checks)

    def message(self) -> str:
        parts = []
        for c in self.checks:
            ok = "ok" if (c.holds_strict if self.strict else c.holds) else "FAILS"
            parts.append(f"{c.check.label or c.check.name} = {c.value:.4g} "
                         f"[{c.lo:.4g}, {c.hi:.4g}] (need {c.check.op} {c.check.threshold:g}: {ok})")
        return f"{self.spec.id} {self.spec.slug}: " + "; ".join(parts)


    def as_dict(self) -> dict:
        s = self.spec
        return {"id": s.id, "slug": s.slug, "family": s.family, "statement": s.statement,
                "source": s.source, "paper_value": s.paper_value, "needs": s.needs,
                "status": self.status, "reason": self.reason, "unstable": self.unstable,
                "checks": [c.as_dict() for c in self.checks],
                "details": self.details}


def apply_thresholds(specs: dict[str, ClaimSpec], thresholds) -> dict[str, ClaimSpec]:
    """Return specs with the configured overrides; unknown IDs or checks are a ConfigError."""
    out = dict(specs)
    for cid, checks in thresholds.items():
        if cid not in specs:
            raise ConfigError(f"threshold given for unknown claim {cid!r}; known claims: {sorted(specs)}.")
        spec = specs[cid]
        checks = dict(checks)
        if "*" in checks:
            if len(spec.checks) != 1:
                raise ConfigError(
                    f"claim {cid} has several checks {[c.name for c in spec.checks]}; override one "
                    f"by name, e.g. {cid}.{spec.checks[0].name} = ... or {cid} = {{ {spec.checks[0].name} = ... }}.")
            checks[spec.checks[0].name] = checks.pop("*")
        try:
            out[cid] = spec.with_thresholds(checks)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from exc
    return out


class ClaimSuite:
    """Computes everything once, on first use; results are looked up per claim."""

    def __init__(self, config: ClaimsConfig, specs: dict[str, ClaimSpec]):
        self.config = config
        self.specs = apply_thresholds(specs, config.thresholds)
        self.analysis = None
        self.results: dict[str, ClaimResult] = {}
        self.verified: list[str] = []
        self._values: dict[str, dict] | None = None

    # ---------------------------------------------------------------------------------------
    def compute(self, progress: bool | None = None) -> None:
        if self._values is not None:
            return
        from .analysis import analyze
        from .attribution import attribute
        from .stats import StatsSettings

        cfg = self.config
        settings = StatsSettings(positions=cfg.positions, max_new_tokens=cfg.max_new_tokens,
                                 max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size)
        self.analysis = analyze(cfg.base, cfg.model, cfg.probe, cfg.prompts, settings, device=cfg.device,
                                dtype=cfg.dtype, cache_dir=cfg.cache_dir or True, progress=progress,
                                top_k=cfg.top_k)
        a = self.analysis.attribution
        gated = bool(self.analysis.provenance["base"]["gated_mlp"])
        self.ctx = ClaimContext(n_layers=a.n_layers, d_mlp=a.d_mlp, gated_mlp=gated, top_k=cfg.top_k)

        self.behaviour = None
        if any("G" in spec.needs for spec in self.specs.values()):
            self.behaviour = self._behaviour(settings, progress)

        def subject(spec, attr, weights):
            """Activation claims read the attribution; behavioural ones the intervention results."""
            return self.behaviour.view(weights) if "G" in spec.needs else attr

        point, skips = {}, {}
        for cid, spec in self.specs.items():
            subj = subject(spec, a, None)
            reason = spec.applies(subj, self.ctx) if spec.applies else None
            if reason:
                skips[cid] = reason
            else:
                point[cid] = {k: float(v) for k, v in spec.metric(subj, self.ctx).items()}
        stats, wt = self.analysis.stats, self.analysis.weights
        K = stats.n_chunks
        B = cfg.bootstrap if K > 1 else 0
        rng = np.random.default_rng(cfg.seed)
        boot = {cid: {k: np.full(B, np.nan) for k in vals} for cid, vals in point.items()}
        self.boot_weights = []
        for b in range(B):
            w = rng.multinomial(K, np.full(K, 1.0 / K)).astype(np.float64)
            self.boot_weights.append(w)
            ab = attribute(stats, wt, w)
            for cid in point:
                spec = self.specs[cid]
                for k, v in spec.metric(subject(spec, ab, w), self.ctx).items():
                    boot[cid][k][b] = float(v)
        self._values = {"point": point, "boot": boot, "skips": skips}
        self.bootstrap_info = {"resamples": B, "seed": cfg.seed, "unit": "prompt chunk", "n_chunks": K,
                               "level": 0.95, "paired": True,
                               "note": "" if K > 1 else "one chunk only: no interval (point estimate shown)"}
        for cid in self.specs:
            self.results[cid] = self._evaluate(cid)

    def _behaviour(self, settings, progress):
        """Intervention results; the models and scorer are opened only if the cache misses."""
        from pathlib import Path

        from .behaviour import evaluate, make_scorer
        from .cache import ResultCache, default_cache_dir
        from .loading import load_model
        from .probe import load_probe
        from .prompts import read_prompts

        cfg, an = self.config, self.analysis

        def models():
            base = an.base or load_model(cfg.base, device=cfg.device, dtype=cfg.dtype)
            model = an.model or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, base=cfg.base)
            return base, model

        def scorer(base):
            return make_scorer(cfg.scorer, base=base, probe=load_probe(cfg.probe, d_model=base.d_model))

        key = {"base_sha256": an.provenance["base"]["sha256"], "model_sha256": an.provenance["model"]["sha256"],
               "dtype": cfg.dtype, "scorer": cfg.scorer, "probe_sha256": an.provenance["probe"]["sha256"]}
        ppl_text = Path(cfg.ppl_text).read_text(encoding="utf-8") if cfg.ppl_text else None
        cache = ResultCache(cfg.cache_dir or default_cache_dir())
        return evaluate(models, read_prompts(cfg.prompts), an.attribution, an.stats, scorer, key=key,
                        settings=settings, ppl_text=ppl_text, cache=cache, edit_alpha=cfg.edit_alpha,
                        edit_beta=cfg.edit_beta, progress=progress,
                        generation_positions={"generated": "last", "all": "all"}[cfg.patch_positions])

    def _interval(self, arr: np.ndarray, point: float) -> tuple[float, float]:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return point, point
        lo, hi = np.percentile(finite, [2.5, 97.5])
        return float(lo), float(hi)

    def _evaluate(self, cid: str) -> ClaimResult:
        spec = self.specs[cid]
        v = self._values
        if cid in v["skips"]:
            return ClaimResult(spec, "skip", v["skips"][cid])
        point, boot = v["point"][cid], v["boot"][cid]
        checks = []
        for c in spec.checks:
            if c.name not in point:
                raise ConfigError(f"claim {cid}'s metric returned no value for check {c.name!r}.")
            val = point[c.name]
            lo, hi = self._interval(boot[c.name], val)
            finite = math.isfinite(val)
            holds = finite and c.holds(val)
            holds_strict = finite and c.holds(c.bound(lo, hi))
            unstable = finite and (c.holds(lo) != c.holds(hi))
            checks.append(CheckResult(c, val, lo, hi, holds, holds_strict, unstable))
        details = {k: {"value": val, "ci": list(self._interval(boot[k], val))}
                   for k, val in point.items() if k not in {c.name for c in spec.checks}}
        nonfinite = [c.check.name for c in checks if not math.isfinite(c.value)]
        ok = all((c.holds_strict if self.config.strict else c.holds) for c in checks)
        reason = f"metric is not finite for {nonfinite}" if nonfinite else ""
        return ClaimResult(spec, "pass" if ok and not nonfinite else "fail", reason, checks, details,
                           strict=self.config.strict)

    def verified_unique(self) -> list[str]:
        """Claims that ran, in the order they ran, each once."""
        return list(dict.fromkeys(self.verified))

    def result(self, cid: str) -> ClaimResult:
        self.compute()
        self.verified.append(cid)
        return self.results[cid]

