"""A claim run: the analysis once, every claim's metric with a paired bootstrap, verdicts.

``ClaimSuite(run, specs).compute()`` is a short pipeline of named steps over a resolved
``RunSpec``: analyse (statistics -> attribution), behaviour (only when a selected claim reads
generations), point estimates, bootstrap, verdicts. Its output is one ``SuiteResult`` record,
the only thing the report reads.

Confidence intervals come from a bootstrap over prompt chunks: each resample draws K chunks
with replacement (multinomial weights), and the *same* weights reweight both models' per-chunk
sums, so the interval is paired across the two models. The 95% interval is the 2.5th-97.5th
percentile of the resampled metric. A claim whose interval straddles its threshold is marked
*unstable*. The verdict uses the point estimate, or under ``strict`` the pessimistic end of the
interval.

One claim's arithmetic never takes the others down: a metric that raises an arithmetic error
at the point estimate makes that claim *undetermined* (skipped, with the reason); in a
resample it gives NaN for that resample only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .claim import Check, ClaimContext, ClaimSpec
from .errors import ConfigError
from .selection import apply_thresholds, claim_order, id_key, with_preconditions  # noqa: F401  (re-exported)
from .verdicts import (MIN_CHUNKS, NOT_HOLDING, check_verdict, inconclusive_reason, pytest_outcome,
                       resolve_reading)

#: The claim whose failure puts every other claim's result in doubt (claims/dpo_toxicity/test_probe_validity.py).
PROBE_VALIDITY = "C24"
# Arithmetic failures of a metric on a degenerate input (a zero denominator in a resample).
_ARITHMETIC = (ArithmeticError, FloatingPointError)


@dataclass
class CheckResult:
    """One check of one claim: its value, the 95% interval ``[lo, hi]`` (the value itself when
    ``has_interval`` is False), the verdict (pass / fail / inconclusive) and the baseline comparison."""

    check: Check
    value: float
    lo: float
    hi: float
    holds: bool          # at the point estimate
    holds_strict: bool   # at the pessimistic interval end
    unstable: bool       # the interval straddles the threshold
    out_of_range: bool = False  # the value lies outside the range where it means what it says
    baseline: object = None     # baseline.Comparison, when a baseline was given
    has_interval: bool = True   # False: not resampled, or too few resamples/chunks (lo = hi = value)
    verdict: str = ""           # pass | fail | inconclusive under the run's reading
    note: str = ""              # for an inconclusive check: what would decide it

    def as_dict(self) -> dict:
        c = self.check
        return {"name": c.name, "label": c.label or c.name, "op": c.op, "threshold": c.threshold,
                "value": self.value, "ci": [self.lo, self.hi] if self.has_interval else None,
                "resampled": c.resampled, "verdict": self.verdict, "note": self.note, "holds": self.holds,
                "holds_strict": self.holds_strict, "unstable": self.unstable,
                "valid_range": list(c.valid) if c.valid else None, "out_of_range": self.out_of_range,
                "baseline": self.baseline.as_dict() if self.baseline is not None else None}


@dataclass
class ClaimResult:
    """One claim's result: its status (``verdicts.STATUSES``), the reason, its checks, and how it
    stands against the baseline (``known_failure``, ``regressed``, ``lost_coverage``, ``improved``)."""

    spec: ClaimSpec
    status: str                      # one of verdicts.STATUSES
    reason: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # extra metric values with intervals
    strict: bool = False                         # the interval reading (kept for old readers)
    flags: list[str] = field(default_factory=list)  # warnings from other claims (an invalid probe)
    #: Why a claim that does not hold is not a new failure: "known failure since the baseline
    #: (...)" or "accepted failure (...)"; pytest reports it as xfail. Empty otherwise.
    known_failure: str = ""
    baseline_status: str | None = None           # the claim's status in the baseline, if any
    lost_coverage: bool = False                  # measured in the baseline, not now
    #: A claim computed only because another selected claim needs it as a precondition.
    precondition_only: bool = False

    @property
    def unstable(self) -> bool:
        return any(c.unstable for c in self.checks)

    @property
    def regressed(self) -> bool:
        return self.lost_coverage or any(c.baseline is not None and c.baseline.regressed for c in self.checks)

    @property
    def improved(self) -> bool:
        return self.baseline_status in NOT_HOLDING and self.status == "pass"

    @property
    def outcome(self) -> str:
        """What the claim's pytest test does: passed, failed, xfailed or skipped."""
        return pytest_outcome(self)

    def message(self) -> str:
        parts = []
        for c in self.checks:
            ok = {"pass": "ok", "fail": "FAILS", "inconclusive": "INCONCLUSIVE"}.get(c.verdict, "FAILS")
            if c.note:
                ok += f", {c.note}"
            if c.out_of_range:
                ok = f"FAILS: outside the meaningful range {list(c.check.valid)}"
            ci = f" [{c.lo:.4g}, {c.hi:.4g}]" if c.has_interval else " (no interval)"
            parts.append(f"{c.check.label or c.check.name} = {c.value:.4g}{ci} "
                         f"(need {c.check.op} {c.check.threshold:g}: {ok})")
            if c.baseline is not None and c.baseline.state == "inconclusive":
                parts.append(f"possibly worse {c.check.name}: {c.baseline.message(c.value)}")
        head = f"{self.spec.id} {self.spec.slug}: "
        if self.status in ("not_checked", "not_meaningful", "skip") and not self.checks:
            return head + self.reason
        return head + "; ".join(parts)

    def as_dict(self) -> dict:
        s = self.spec
        return {"id": s.id, "slug": s.slug, "pack": s.pack, "family": s.family, "statement": s.statement,
                "source": s.source, "paper_value": s.paper_value, "needs": s.needs, "tags": list(s.tags),
                "requires": list(s.preconditions), "status": self.status, "outcome": self.outcome,
                "reason": self.reason, "unstable": self.unstable, "regressed": self.regressed,
                "lost_coverage": self.lost_coverage, "known_failure": self.known_failure,
                "baseline_status": self.baseline_status, "improved": self.improved,
                "precondition_only": self.precondition_only, "flags": list(self.flags),
                "checks": [c.as_dict() for c in self.checks],
                "details": self.details}


@dataclass
class SuiteResult:
    """Everything a claim run produced; the report, JSON and JUnit read only this."""

    run: object                      # runspec.RunSpec
    analysis: object                 # analysis.NeuronAnalysis
    behaviour: object | None         # behaviour.BehaviourResult, when a behavioural claim ran
    claims: list[ClaimResult]        # the claims that ran, in ID order
    bootstrap: dict
    boot_weights: list = field(default_factory=list, repr=False)
    reading: str = "point"           # verdicts.READINGS, resolved
    preconditions: list = field(default_factory=list)  # ClaimResults computed only as preconditions
    depth: object | None = None      # depth.DepthResult, when a depth claim ran

    def packs(self) -> dict[str, list[ClaimResult]]:
        """The claims that ran, grouped by pack (in the order packs first appear)."""
        out: dict[str, list[ClaimResult]] = {}
        for r in self.claims:
            out.setdefault(r.spec.pack, []).append(r)
        return out

    def counts(self) -> dict[str, int]:
        """Claims per status, plus regressed / known failures / improved (a claim may be in two)."""
        from .verdicts import STATUSES

        out = {s: sum(r.status == s for r in self.claims) for s in STATUSES}
        out["regressed"] = sum(r.regressed for r in self.claims)
        out["known_failure"] = sum(bool(r.known_failure) and r.outcome == "xfailed" for r in self.claims)
        out["improved"] = sum(r.improved for r in self.claims)
        return out

    @property
    def config(self):
        return self.run.config


@dataclass
class _Side:
    """One (base, candidate) pair's computed inputs to the claims: the candidate's, or the
    baseline model's on the same base, prompts and probe."""

    analysis: object
    behaviour: object | None = None
    depth: object | None = None      # depth.DepthResult, when a depth claim (needs "D") is selected
    point: dict = field(default_factory=dict)
    skips: dict = field(default_factory=dict)
    boot: dict = field(default_factory=dict)
    scope: dict = field(default_factory=dict)  # claim ID -> what its verdict covers (ClaimSpec.scope)


class ClaimSuite:
    """Computes everything once, on first use; results are looked up per claim."""

    def __init__(self, run, specs: dict[str, ClaimSpec]):
        self.run = run
        self.config = run.config
        self.selected = set(specs)
        all_specs, self.precondition_only = with_preconditions(specs)
        self.specs = apply_thresholds(all_specs, run.config.thresholds)
        self.reading = resolve_reading(self.config.reading, strict=self.config.strict)
        self.analysis = None
        self.behaviour = None
        self.depth = None
        self.baseline: _Side | None = None
        self.ctx: ClaimContext | None = None
        self.results: dict[str, ClaimResult] = {}
        self.verified: list[str] = []
        self.boot_weights: list[np.ndarray] = []
        self.bootstrap_info: dict = {}

    # --- the pipeline --------------------------------------------------------------------------
    def compute(self, progress: bool | None = None) -> None:
        if self.results:
            return
        run = self.run
        side = self._side(run.model, progress)
        self.analysis, self.behaviour, self.depth = side.analysis, side.behaviour, side.depth
        self.ctx = self._context()
        self._claims(side, draw=True)
        if run.baseline_model is not None:  # paired: same chunks, same bootstrap weights
            self.baseline = self._side(run.baseline_model, progress)
            self._claims(self.baseline, draw=False)
        baseline_statuses = self._baseline_statuses()
        self.results = self._verdicts(side, compare=True, baseline_statuses=baseline_statuses)

    def _verdicts(self, side: _Side, *, compare: bool, baseline_statuses: dict | None) -> dict[str, ClaimResult]:
        """Every claim's result on one side: its own checks, then its preconditions (in dependency
        order), then the baseline's ratchet and the accepted list."""
        results = {}
        for cid in sorted(self.specs, key=self._precondition_depth):
            r = self._evaluate(cid, side, compare=compare)
            self._apply_preconditions(r, results)
            r.precondition_only = cid in self.precondition_only
            results[cid] = r
        for r in results.values():
            self._apply_baseline(r, (baseline_statuses or {}).get(r.spec.id))
            self._apply_accepted(r)
        self._flag_invalid_probe(results)
        return dict(sorted(results.items(), key=lambda kv: id_key(kv[0])))

    def _precondition_depth(self, cid: str) -> tuple:
        """Preconditions first (C24, C2, C1, then the claims that read them)."""
        depth, seen, todo = 0, set(), [cid]
        while todo:
            nxt = [r for c in todo if c in self.specs for r in self.specs[c].preconditions if r not in seen]
            seen.update(nxt)
            todo = nxt
            depth += bool(nxt)
        return (depth, id_key(cid))

    def _apply_preconditions(self, r: ClaimResult, done: dict[str, ClaimResult]) -> None:
        from .claim import PRECONDITIONS

        failed, unchecked = [], []
        for pid in r.spec.preconditions:
            p = done.get(pid)
            if p is None:
                if pid in PRECONDITIONS:
                    unchecked.append(f"{pid} ({PRECONDITIONS[pid]}) was not collected")
                continue
            what = PRECONDITIONS.get(pid, p.spec.slug)
            if p.status == "fail":
                failed.append(f"{pid} ({what}) failed: {p.message().split(': ', 1)[-1]}")
            elif p.status == "not_meaningful":
                failed.append(f"{pid} ({what}) is not meaningful either")
            elif p.status in ("not_checked", "skip", "inconclusive"):
                unchecked.append(f"{pid} ({what}) is {p.status.replace('_', ' ')}")
        if failed and r.status in ("pass", "fail", "inconclusive"):
            r.status = "not_meaningful" if r.spec.is_gate else "skip"
            r.reason = "not meaningful: precondition " + "; ".join(failed)
        for u in unchecked:
            r.flags.append(f"precondition {u}: this result rests on it")

    def _apply_baseline(self, r: ClaimResult, before: str | None) -> None:
        """Lost coverage, the ratchet and improvements against the baseline's status."""
        if before is None or r.spec.id not in self.selected:
            return
        from .baseline import MEASURED

        r.baseline_status = before
        if before in MEASURED and r.status in ("skip", "not_checked"):
            r.lost_coverage = True
            r.reason = f"lost coverage: measured in the baseline ({before}), not measured now: {r.reason}"
            r.status = "fail"
        elif before in NOT_HOLDING and r.status in NOT_HOLDING and not r.regressed:
            r.known_failure = f"known failure since the baseline (baseline: {before}; not worse now)"

    def _apply_accepted(self, r: ClaimResult) -> None:
        if r.spec.id in self.config.accepted and r.status in NOT_HOLDING and not r.regressed and not r.known_failure:
            r.known_failure = "accepted failure ([tool.mechclaims] accepted)"

    def _baseline_statuses(self) -> dict[str, str] | None:
        if self.baseline is not None:
            return {cid: r.status for cid, r in self._verdicts(self.baseline, compare=False,
                                                                   baseline_statuses=None).items()}
        if self.run.baseline_report is not None:
            from .baseline import report_statuses

            return report_statuses(self.run.baseline_report)
        return None

    @staticmethod
    def _flag_invalid_probe(results: dict[str, ClaimResult]) -> None:
        """Claims that do not declare the probe as a precondition still read it: say so."""
        probe = results.get(PROBE_VALIDITY)
        if probe is not None and probe.status == "fail":
            for cid, r in results.items():
                if cid != PROBE_VALIDITY and PROBE_VALIDITY not in r.spec.preconditions:
                    r.flags.append(f"{PROBE_VALIDITY} failed: the probe may not measure toxicity, so neither may this")

    def _side(self, model, progress) -> _Side:
        analysis = self._analyse(model, progress)
        behaviour = depth = None
        if self.run.scorer is not None and any(spec.needs == "G" for spec in self.specs.values()):
            behaviour = self._behaviour(analysis, progress)
        if self.run.scorer is not None and self._depth_parts():
            depth = self._depth(analysis, progress)
        return _Side(analysis, behaviour, depth)

    def _claims(self, side: _Side, *, draw: bool) -> None:
        side.point, side.skips, side.scope = self._point_estimates(side)
        side.boot = self._bootstrap(side, draw=draw)

    def _analyse(self, model, progress):
        from .analysis import analyze
        from .devices import parse_device_map

        run, cfg = self.run, self.config
        return analyze(run.base, model, run.probe, list(run.prompts), run.settings, device=cfg.device,
                       dtype=cfg.dtype, cache_dir=run.cache_dir, progress=progress, top_k=cfg.top_k,
                       device_map=parse_device_map(cfg.device_map) if cfg.device_map else None,
                       auto_batch_size=run.auto_batch)

    def _context(self) -> ClaimContext:
        a = self.analysis.attribution
        gated = bool(self.analysis.provenance["base"]["gated_mlp"])
        return ClaimContext(n_layers=a.n_layers, d_mlp=a.d_mlp, gated_mlp=gated, top_k=self.config.top_k,
                            probe_metadata=dict(getattr(self.run.probe, "metadata", {}) or {}),
                            base_sha256=str(self.analysis.provenance["base"].get("sha256") or ""),
                            max_new_tokens=int(self.run.settings.max_new_tokens))

    def _behaviour(self, an, progress):
        """Intervention results on the run's resolved inputs; the models and the scorer are
        opened only if the cache misses (they are the analysis's own when it loaded them)."""
        from .behaviour import evaluate
        from .cache import ResultCache
        from .scoring import make_scorer, scorer_digest

        run, cfg = self.run, self.config
        key = {"base_sha256": an.provenance["base"]["sha256"], "model_sha256": an.provenance["model"]["sha256"],
               "dtype": cfg.dtype, "scorer": run.scorer, "probe_sha256": an.provenance["probe"]["sha256"],
               "scorer_digest": scorer_digest(run.scorer)}  # the lexicon's bytes, a registered scorer's code
        ppl_text = _read_text(run.ppl_text) if run.ppl_text else None
        return evaluate(an.open_models, list(run.prompts), an.attribution, an.stats,
                        lambda base: make_scorer(run.scorer, base=base, probe=run.probe), key=key,
                        settings=_batch_of(run.settings, an), ppl_text=ppl_text, cache=ResultCache(run.cache_dir),
                        edit_alpha=cfg.edit_alpha, edit_beta=cfg.edit_beta, progress=progress,
                        patch_positions=cfg.patch_positions, probe=run.probe, kinds=self._kinds(),
                        # A cached analysis measured no free memory: measure when the models open.
                        auto_batch_device=cfg.device if run.auto_batch and an.base is None else None)

    def _depth_parts(self) -> tuple[str, ...]:
        """The depth parts the selected depth claims read (none selected: nothing is computed)."""
        from .depth import PARTS

        parts = set()
        for spec in self.specs.values():
            if spec.needs == "D":
                parts.update(PARTS if spec.interventions is None else spec.interventions)
        return tuple(p for p in PARTS if p in parts)

    def _depth(self, an, progress):
        """Per-token KL and prefilled generations on the statistics' continuations; the models
        and the scorer are opened only if the cache misses."""
        from .cache import ResultCache
        from .depth import evaluate_depth
        from .scoring import make_scorer, scorer_digest

        run, cfg = self.run, self.config
        key = {"base_sha256": an.provenance["base"]["sha256"], "model_sha256": an.provenance["model"]["sha256"],
               "dtype": cfg.dtype, "scorer": run.scorer, "scorer_digest": scorer_digest(run.scorer)}
        return evaluate_depth(an.open_models, list(run.prompts), an.stats,
                              lambda base: make_scorer(run.scorer, base=base, probe=run.probe), key=key,
                              parts=self._depth_parts(), cache=ResultCache(run.cache_dir), progress=progress)

    def _kinds(self):
        """The intervention kinds the selected behavioural claims read (None: all)."""
        kinds = set()
        for spec in self.specs.values():
            if spec.needs == "G":
                if spec.interventions is None:
                    return None
                kinds.update(spec.interventions)
        return tuple(sorted(kinds))

    @staticmethod
    def _subject(spec, side: _Side, attribution, weights):
        """Activation claims read the attribution; behavioural ones the intervention results."""
        if spec.needs == "G":
            return side.behaviour.view(weights)
        if spec.needs == "D":
            return side.depth.view(weights)
        return attribution

    def _point_estimates(self, side: _Side):
        point, skips, scope = {}, {}, {}
        a = side.analysis.attribution
        for cid, spec in self.specs.items():
            if (spec.needs == "G" and side.behaviour is None) or (spec.needs == "D" and side.depth is None):
                from .scoring import NO_SCORER_REASON

                skips[cid] = NO_SCORER_REASON
                continue
            subj = self._subject(spec, side, a, None)
            try:
                reason = spec.applies(subj, self.ctx) if spec.applies else None
                if not reason:
                    point[cid] = {k: float(v) for k, v in spec.metric(subj, self.ctx).items()}
                    if spec.scope is not None:
                        scope[cid] = spec.scope(subj, self.ctx)
            except _ARITHMETIC as exc:
                reason = f"undetermined: the metric could not be computed ({type(exc).__name__}: {exc})"
            if reason:
                skips[cid] = reason
        return point, skips, scope

    def _bootstrap(self, side: _Side, *, draw: bool):
        """Resample prompt chunks; ``draw`` makes the weights, otherwise the candidate's are reused
        (a baseline model's sums are reweighted exactly as the candidate's: a paired interval)."""
        from .attribution import attribute

        stats, wt = side.analysis.stats, side.analysis.weights
        K = stats.n_chunks
        if draw:
            B = self.config.bootstrap if K >= MIN_CHUNKS else 0
            rng = np.random.default_rng(self.config.seed)
            self.boot_weights = [rng.multinomial(K, np.full(K, 1.0 / K)).astype(np.float64) for _ in range(B)]
            note = ""
            if K < MIN_CHUNKS:
                note = (f"{K} prompt chunk(s), fewer than {MIN_CHUNKS}: no interval (give at least {MIN_CHUNKS} "
                        "prompts); the interval reading calls every resampled check inconclusive")
            elif B == 0:
                note = "--bootstrap 0: no interval; the interval reading calls every resampled check inconclusive"
            self.bootstrap_info = {"resamples": B, "seed": self.config.seed, "unit": "prompt chunk", "n_chunks": K,
                                   "level": 0.95, "paired": True, "reading": self.reading, "note": note}
        B = len(self.boot_weights)
        boot = {cid: {k: np.full(B, np.nan) for k in vals} for cid, vals in side.point.items()}
        for b, w in enumerate(self.boot_weights):
            ab = attribute(stats, wt, w)
            for cid in side.point:
                spec = self.specs[cid]
                try:
                    values = spec.metric(self._subject(spec, side, ab, w), self.ctx)
                except _ARITHMETIC:
                    continue  # this resample is degenerate for this claim: NaN, excluded below
                for k, v in values.items():
                    boot[cid][k][b] = float(v)
        return boot

    # --- verdicts ------------------------------------------------------------------------------
    @staticmethod
    def _interval(arr: np.ndarray, point: float) -> tuple[float, float]:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return point, point
        lo, hi = np.percentile(finite, [2.5, 97.5])
        return float(lo), float(hi)

    def _evaluate(self, cid: str, side: _Side, *, compare: bool = True) -> ClaimResult:
        spec = self.specs[cid]
        if cid in side.skips:
            if spec.is_gate:  # the gate never goes green on what it did not check
                return ClaimResult(spec, "not_checked", f"not checked: {side.skips[cid]}")
            return ClaimResult(spec, "skip", side.skips[cid])
        point, boot = side.point[cid], side.boot[cid]
        base_vals = self._baseline_values(cid) if compare else None
        n_prompts = len(self.run.prompts)
        checks, reasons = [], []
        for c in spec.checks:
            if c.name not in point:
                raise ConfigError(f"claim {cid}'s metric returned no value for check {c.name!r}.")
            val = point[c.name]
            has_interval = c.resampled and len(self.boot_weights) > 0
            lo, hi = self._interval(boot[c.name], val) if has_interval else (val, val)
            if has_interval and not (math.isfinite(lo) and math.isfinite(hi)):
                has_interval, lo, hi = False, val, val
            finite = math.isfinite(val)
            in_range = finite and c.in_range(val)
            holds = in_range and c.holds(val)
            holds_strict = in_range and c.holds(c.bound(lo, hi))
            unstable = finite and has_interval and (c.holds(lo) != c.holds(hi))
            verdict = check_verdict(c, val, lo, hi, has_interval, self.reading) if in_range else "fail"
            note = ""
            if verdict == "inconclusive":
                reasons.append(inconclusive_reason(c, val, lo, hi, has_interval, n_prompts))
                note = reasons[-1].rsplit("; ", 1)[-1] if has_interval else "no interval"
            cmp = self._compare(cid, c, val, boot[c.name], base_vals, has_interval)
            checks.append(CheckResult(c, val, lo, hi, holds, holds_strict, unstable, finite and not in_range, cmp,
                                      has_interval, verdict, note))
        # no interval around a detail with no value (a k too thin to measure: the few resamples
        # where it is measurable would give an interval with nothing inside it)
        details = {k: {"value": val, "ci": list(self._interval(boot[k], val))
                       if self.boot_weights and isinstance(val, (int, float)) and math.isfinite(val) else None}
                   for k, val in point.items() if k not in {c.name for c in spec.checks}}
        nonfinite = [c.check.name for c in checks if not math.isfinite(c.value)]
        outside = [c.check.name for c in checks if c.out_of_range]
        regressed = [c for c in checks if c.baseline is not None and c.baseline.regressed]
        verdicts = {c.verdict for c in checks}
        status = "fail" if ("fail" in verdicts or nonfinite or regressed) else (
            "inconclusive" if "inconclusive" in verdicts else "pass")
        reason = "; ".join(r for r in (
            f"metric is not finite for {nonfinite}" if nonfinite else "",
            f"{outside} outside the range where the value means what the claim says "
            f"(a share far outside [0, 1]: a near-zero denominator or scores that are not rates)"
            if outside else "",
            *(f"REGRESSED {c.check.label or c.check.name}: {c.baseline.message(c.value)}" for c in regressed),
            *(reasons if status == "inconclusive" else ()),
            spec.explain(self.ctx) if spec.explain is not None and status == "fail" else "",
            side.scope.get(cid, "")) if r)
        return ClaimResult(spec, status, reason, checks, details, strict=self.reading == "interval")

    def _baseline_values(self, cid: str):
        """(point values, bootstrap arrays or None) of the baseline for a claim, or None."""
        if self.baseline is not None:
            if cid not in self.baseline.point:
                return None
            return self.baseline.point[cid], self.baseline.boot[cid]
        if self.run.baseline_report is not None:
            from .baseline import report_values

            vals = report_values(self.run.baseline_report).get(cid)
            return (vals, None) if vals else None
        return None

    def _compare(self, cid, check, value, boot, base_vals, has_interval: bool):
        from .baseline import compare, report_half_widths, tolerance

        if base_vals is None or check.name not in base_vals[0]:
            return None
        b_point, b_boot = base_vals
        b = float(b_point[check.name])
        tol = tolerance(cid, check, self.config.regression, b)
        if not has_interval:    # not resampled (or no interval at all): the point difference
            return compare(check, value, b, None, tol, paired=b_boot is not None)
        if b_boot is not None:  # paired: the difference under the same chunk weights
            return compare(check, value, b, self._interval(boot - b_boot[check.name], value - b), tol)
        # A fixed baseline: both half-widths in quadrature around the difference.
        lo, hi = self._interval(boot, value)
        h_base = report_half_widths(self.run.baseline_report).get(cid, {}).get(check.name, 0.0)
        h = math.hypot((hi - lo) / 2.0, h_base)
        d = value - b
        return compare(check, value, b, (d - h, d + h), tol, paired=False)

    # --- per-claim access and the record --------------------------------------------------------
    def verified_unique(self) -> list[str]:
        """Claims that ran, in the order they ran, each once."""
        return list(dict.fromkeys(self.verified))

    def result(self, cid: str) -> ClaimResult:
        self.compute()
        self.verified.append(cid)
        return self.results[cid]

    def suite_result(self) -> SuiteResult:
        ran = sorted((self.results[c] for c in self.verified_unique()), key=lambda r: claim_order(r.spec))
        pre = [r for c, r in self.results.items() if c in self.precondition_only]
        return SuiteResult(self.run, self.analysis, self.behaviour, ran, self.bootstrap_info, self.boot_weights,
                           reading=self.reading, preconditions=pre, depth=self.depth)


def _read_text(path: str) -> str:
    from .perplexity import load_text

    return load_text(path)


def _batch_of(settings, analysis):
    """The run's settings with the batch size the analysis used (chosen from free memory on a
    CUDA device when none was given): the intervention sets generate in the same batches."""
    from dataclasses import replace

    return replace(settings, batch_size=int(analysis.provenance["settings"]["batch_size"]))
