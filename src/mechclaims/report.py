"""The claim report: ``claims.json`` (every number, stable keys) and ``claims.html``.

The HTML is rendered from the JSON document itself through a Jinja2 template, so the two
cannot disagree; figures are matplotlib PNGs embedded as base64 (no network, one file).

JSON schema ``mechclaims.claims/2`` (top-level keys):

``schema``, ``created``
``config``       the frozen run configuration (options, thresholds, bootstrap settings)
``provenance``   models (source, sha256, architecture, dims, dtype), probe, prompts,
                 settings (positions, tokens, accumulation, weight processing), versions
``bootstrap``    resamples, seed, unit, number of chunks, level, paired
``reading``      how checks were read: point (the paper's) or interval (the gate's)
``counts``       number of claims per status (``verdicts.STATUSES``), regressed, known_failure, improved
``packs``        the claim packs that ran, by ID: title, description, papers (title, authors, arXiv
                 id, venue, code); a claim in no pack is under ""
``claims``       list, one per claim run: id, slug, pack, family, statement, source, paper_value, tags,
                 requires, status, outcome (the pytest outcome), reason, unstable, regressed,
                 lost_coverage, known_failure, baseline_status, improved, flags, checks [name,
                 label, op, threshold, value, ci (null: no interval), resampled, verdict, holds,
                 holds_strict, unstable, baseline {baseline, diff, ci, tolerance, state}],
                 details {name: {value, ci}}
``preconditions`` claims computed only because a selected claim rests on them (same fields)
``attribution``  the engine's summary: net, gross reduction/increase, counts, per-layer
                 sums, Definition A/B group counts, sums and shares, v2 toxic-neuron share
``depth``        when a depth claim ran (pack shallow-alignment): T, the prefill ks, the mean KL per
                 position with intervals, and per k the windows' toxicity, restored and fall shares
``layers``       per-layer mean MLP-output and residual projections onto the probe, base and DPO
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np

from .cache import atomic_write_text
from .choices import CUMULATIVE_SETS, GROUPS_B, REDUCING_B, SET_BASE, SET_DPO
from .provenance import display_path, display_paths, now_utc
from .suite import SuiteResult

#: Version 2: statuses inconclusive / not_checked / not_meaningful, the reading, per-check
#: verdicts, ``ci: null`` where there is no interval, baseline states, preconditions, and the
#: scorer's and perplexity text's content hashes under ``inputs``.
SCHEMA = "mechclaims.claims/2"


def _clean(x):
    """JSON-safe: NaN/inf become null (never a silent number)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def build_document(result: SuiteResult) -> dict:
    """The claims.json document. Paths in it are shown as ``provenance.display_path`` shows them
    (as given, or relative to the working directory, or ``<fixtures>/...``): a report does not
    carry the layout of the machine that made it."""
    an = result.analysis
    results = result.claims
    counts = result.counts()
    st = an.stats
    inputs = result.run.inputs()
    # The analysis receives the prompts as a list; the run knows the file they came from.
    prov = {**an.provenance, "prompts": {**an.provenance["prompts"], "source": inputs["prompts"]}}
    doc = {
        "schema": SCHEMA,
        "created": now_utc(),
        "config": _public_config(result),
        "inputs": inputs,
        "provenance": prov,
        "bootstrap": result.bootstrap,
        "reading": result.reading,
        "counts": counts,
        "claims": [r.as_dict() for r in results],
        "preconditions": [r.as_dict() for r in result.preconditions],
        "attribution": an.summary,
        "behaviour": _behaviour_doc(result),
        "depth": None if result.depth is None else {"scorer": result.depth.scorer, **result.depth.provenance,
                                                    **result.depth.table(result.boot_weights or None)},
        "packs": _packs_doc(result),
        "layers": {
            "mlp_out_proj_base": st.base.mean_mlp_out_proj().tolist(),
            "mlp_out_proj_dpo": st.model.mean_mlp_out_proj().tolist(),
            "resid_post_proj_base": st.base.mean_resid_post_proj().tolist(),
            "resid_post_proj_dpo": st.model.mean_resid_post_proj().tolist(),
        },
    }
    return display_paths(_clean(json.loads(json.dumps(doc, default=str))))


def _public_config(result: SuiteResult) -> dict:
    """The options, with the defaults the run resolved them to (an organism's base, probe,
    prompts, scorer and text) and paths shown relative to the working directory."""
    run = result.run
    cfg = {**result.config.public(), "base": run.base.label, "probe": run.probe_path, "prompts": run.prompts_path,
           "scorer": run.scorer, "ppl_text": run.ppl_text or ""}
    for k in ("report", "cache_dir", "probe", "prompts", "ppl_text"):
        if cfg.get(k):
            cfg[k] = display_path(cfg[k])
    return cfg


def _packs_doc(result: SuiteResult) -> dict:
    from .claim import PACKS

    out = {}
    for pid in result.packs():
        pack = PACKS.get(pid)
        out[pid] = pack.as_dict() if pack is not None else {"id": pid, "title": "claims in no pack",
                                                           "description": "", "papers": []}
    return out


def _behaviour_doc(result: SuiteResult) -> dict | None:
    beh = result.behaviour
    if beh is None:
        return None
    return {"scorer": beh.scorer, "settings": beh.settings, "edit": beh.edit,
            "sets": beh.table(result.boot_weights or None)}


# ------------------------------------------------------------------------------------------
# Figures


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


COLORS = {"TP↓": "#c0392b", "TN↓": "#e67e22", "AP↓": "#2980b9", "AN↓": "#16a085",
          "TP↑": "#f1948a", "TN↑": "#f8c471", "AP↑": "#85c1e9", "AN↑": "#76d7c4"}


def per_layer_figure(summary: dict, n_layers: int):
    """Per-layer Σ Δ stacked by Definition-B group (reductions above 0, increases below) and the
    net. The legend sits below the axes, outside them, so it never covers a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(n_layers)
    bottom_pos, bottom_neg = np.zeros(n_layers), np.zeros(n_layers)
    for g in GROUPS_B:
        vals = np.asarray(summary["per_layer"]["group_b"][g], dtype=np.float64)
        bottom = bottom_pos if g.endswith("↓") else bottom_neg
        ax.bar(x, vals, bottom=bottom.copy(), color=COLORS[g], label=g, width=0.8)
        bottom += vals
    ax.plot(x, summary["per_layer"]["net"], "k.-", label="net Σ Δ")
    ax.set_xticks(x)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("Σ Δ (probe-projection units)")
    ax.set_title("Per-layer reduction (↓, above 0) and increase (↑, below 0) by group")
    # Below the x-axis label, in one row: savefig(bbox_inches="tight") keeps it in the image.
    ax.legend(ncol=len(GROUPS_B) + 1, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              frameon=False, columnspacing=1.2, handlelength=1.5)
    return fig


def figures(result: SuiteResult, max_points: int = 20000) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result.analysis.attribution
    s = result.analysis.summary
    out = {}

    # 1. per-layer net and gross reduction by group
    out["per_layer"] = _png(per_layer_figure(s, a.n_layers))
    L = a.n_layers
    x = np.arange(L)

    # 2. the four-group bar chart
    fig, ax = plt.subplots(figsize=(5, 3.2))
    shares = [s["group_b_share"][g] if s["group_b_share"][g] is not None else 0.0 for g in REDUCING_B]
    shares = [0.0 if (v is None or not math.isfinite(v)) else v for v in shares]
    bars = ax.bar(REDUCING_B, shares, color=[COLORS[g] for g in REDUCING_B])
    for b, v in zip(bars, shares):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0%}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("share of gross reduction")
    ax.set_title("Four reducing groups (Definition B)")
    out["groups"] = _png(fig)

    # 3. cosine against delta (the paper's contribution plot)
    fig, ax = plt.subplots(figsize=(6, 4))
    cos, d, gb = a.cos.ravel(), a.delta.ravel(), a.group_b.ravel()
    idx = np.arange(cos.size)
    if cos.size > max_points:
        idx = np.random.default_rng(0).choice(cos.size, max_points, replace=False)
    for i, g in enumerate(GROUPS_B):
        sel = idx[gb[idx] == i]
        ax.scatter(cos[sel], d[sel], s=4, alpha=0.6, color=COLORS[g], label=g)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("cos(v_base, w)")
    ax.set_ylabel("Δ = proj_base − proj_dpo")
    ax.set_title("Neuron contributions" + (f" ({max_points} sampled)" if cos.size > max_points else ""))
    ax.legend(ncol=len(GROUPS_B), fontsize=7, markerscale=3, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              frameon=False)  # outside the axes: the points near 0 are the dense ones
    out["scatter"] = _png(fig)

    # 4. distribution of delta
    fig, ax = plt.subplots(figsize=(6, 3.2))
    nz = d[d != 0]
    if nz.size:
        lim = np.percentile(np.abs(nz), 99.5)
        ax.hist(np.clip(nz, -lim, lim), bins=80, color="#555")
    ax.axvline(0, color="r", lw=0.8)
    ax.set_xlabel("Δ per neuron (clipped at the 99.5th |Δ| percentile)")
    ax.set_ylabel("neurons")
    ax.set_title(f"Distribution of Δ ({s['n_delta_positive']} > 0, {s['n_delta_negative']} < 0, "
                 f"{s['n_delta_zero']} = 0)")
    out["delta_hist"] = _png(fig)

    # 5. layer-level projection of the MLP output (paper v1 Fig. 1a)
    st = result.analysis.stats
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(x, st.base.mean_mlp_out_proj(), "o-", label="base")
    ax.plot(x, st.model.mean_mlp_out_proj(), "s-", label="DPO")
    ax.set_xticks(x)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean MLP output · ŵ")
    ax.set_title("MLP-layer output projection onto the probe")
    ax.legend()
    out["layer_projection"] = _png(fig)

    beh = result.behaviour
    if beh is not None:
        rows = beh.table()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
        names = [r["set"] for r in rows]
        tox = [r["toxicity"] for r in rows]
        colors = ["#555" if r["target"] == "base" and r["kind"] == "none" else
                  "#1e8449" if r["set"] == SET_DPO else "#2980b9" for r in rows]
        ax.bar(range(len(rows)), tox, color=colors)
        ax.axhline(tox[names.index(SET_DPO)], color="#1e8449", lw=0.8, ls="--")
        ax.set_xticks(range(len(rows)), names, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"toxicity ({beh.scorer.get('name', 'scorer')})")
        ax.set_title("Toxicity per intervention set (dashed: DPO)")
        ppl = [r["ppl"] if r["ppl"] is not None else np.nan for r in rows]
        if np.isfinite(ppl).any():
            ax2.barh(range(len(rows)), ppl, color=colors)
            ax2.set_yticks(range(len(rows)), names, fontsize=8)
            ax2.invert_yaxis()
            ax2.set_xscale("log")
            ax2.set_xlabel("perplexity (log scale)")
        else:
            ax2.text(0.5, 0.5, "no perplexity text given\n(--ppl-text)", ha="center", va="center")
            ax2.set_axis_off()
        ax2.set_title("Perplexity per set")
        fig.tight_layout()
        out["behaviour"] = _png(fig)
    if result.depth is not None:
        out["depth"] = _depth_figure(result.depth.table(result.boot_weights or None))
    if beh is not None and all(s in beh.tox_sum for s in CUMULATIVE_SETS):
        rows = beh.table()
        names = [r["set"] for r in rows]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        steps = [SET_BASE, *CUMULATIVE_SETS, SET_DPO]
        vals = [rows[names.index(n)]["toxicity"] for n in steps]
        ax.plot(range(len(steps)), vals, "o-")
        ax.set_xticks(range(len(steps)), ["base", "TP↓", "+AN↓", "+TN↓", "+AP↓", "DPO"])
        ax.set_ylabel("toxicity")
        ax.set_title("Cumulative group patching")
        out["cumulative"] = _png(fig)
    return out


def _depth_figure(t: dict) -> str:
    """Q1's per-position KL and Q2/Q3's shares against the number of prefilled tokens."""
    import matplotlib.pyplot as plt

    has_kl, has_pf = "kl_per_position" in t, "prefill" in t
    fig, axes = plt.subplots(1, int(has_kl) + int(has_pf), figsize=(5.5 * (int(has_kl) + int(has_pf)), 3.2),
                             squeeze=False)
    axes = list(axes[0])
    if has_kl:
        ax = axes.pop(0)
        kl = np.array(t["kl_per_position"])
        x = np.arange(1, len(kl) + 1)
        ax.bar(x, kl, color=["#c0392b" if i < t["early_positions"] else "#888" for i in range(len(kl))])
        if "kl_per_position_ci" in t:
            ci = np.array(t["kl_per_position_ci"], dtype=float)
            ax.errorbar(x, kl, yerr=[kl - ci[:, 0], ci[:, 1] - kl], fmt="none", ecolor="#333", lw=0.8)
        ax.set_xlabel("generated position")
        ax.set_ylabel("KL(candidate || base), nats")
        ax.set_title(f"Q1: per-token KL (red: first {t['early_positions']})")
    if has_pf:
        ax = axes.pop(0)
        rows = t["prefill"]
        ks = [r["k"] for r in rows]
        for key, label, color in (("restored", "Q2: candidate after k base tokens (restored)", "#c0392b"),
                                  ("fall", "Q3: base after k candidate tokens (fall)", "#1e8449")):
            vals = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
            ax.plot(ks, vals, "o-", color=color, label=label)
            cis = [r.get(key + "_ci") for r in rows]
            if all(c is not None and None not in c for c in cis):
                c = np.array(cis, dtype=float)
                ax.fill_between(ks, c[:, 0], c[:, 1], color=color, alpha=0.15)
        ax.axhline(0.5, color="#555", lw=0.8, ls="--")
        ax.set_xticks(ks)
        ax.set_xlabel("prefilled tokens k")
        ax.set_ylabel("share of DPO's drop")
        ax.set_title("Prefilling (dashed: half, S2's line)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------
# Rendering


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


#: What each status means, in the words of the report's legend (``verdicts`` defines them).
STATUS_LEGEND = (
    ("pass", "pass", "the measured value meets the threshold (interval reading: its whole 95% interval does)"),
    ("fail", "fail", "the value misses the threshold, is not finite or lies outside the range where it means "
                     "what the claim says, or the claim regressed against the baseline; fails the run"),
    ("inconclusive", "inconclusive", "interval reading only: the 95% interval straddles the threshold; more "
                                     "prompts would decide it; fails the run"),
    ("not_checked", "not checked", "a gate claim that could not be computed (an input is missing); fails the "
                                   "run: the gate never passes what it did not check"),
    ("not_meaningful", "not meaningful", "a claim it rests on failed (probe validity C24, fluency C2, DPO lowers "
                                         "toxicity C1), so its numbers do not mean what it says; fails the run"),
    ("known", "known failure", "did not hold in the baseline either and did not get worse, or is accepted in "
                               "the configuration; reported as xfail, does not fail the run"),
    ("skip", "skipped", "an exploratory claim that does not apply to this pair (the reason is given); does not "
                        "fail the run"),
)


def render_html(doc: dict, figs: dict[str, str]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from .summary import GROUPS, group_claims, verdict, verdict_line

    env = Environment(loader=PackageLoader("mechclaims", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["fmt"] = fmt
    env.filters["pct"] = lambda x: "n/a" if x is None else f"{x:.1%}"
    members = group_claims(doc)
    has_baseline = bool((doc.get("inputs") or {}).get("baseline"))
    # The header: every claim in exactly one group, as the terminal's verdict line counts them.
    # The groups a gate asks about are always shown (0 included); the others when not empty.
    always = {"failed", "inconclusive", "not_checked", "not_meaningful", "passed"}
    if has_baseline:
        always.add("regressed")
    header = [{"group": g, "words": words + ("s" if g == "known_failure" and len(members[g]) != 1 else ""),
               "ids": members[g]} for g, words in GROUPS if members[g] or g in always]
    notes = {c["id"]: claim_note(c, has_baseline) for c in doc.get("claims") or []}
    n_prompts = ((doc.get("provenance") or {}).get("prompts") or {}).get("n")
    decide = {c["id"]: {k["name"]: decide_note(k, n_prompts) for k in c.get("checks") or []
                        if k.get("verdict") == "inconclusive"} for c in doc.get("claims") or []}
    return env.get_template("claims.html.j2").render(
        doc=doc, figs=figs, groups=GROUPS_B, header=header, verdict=verdict(doc), verdict_line=verdict_line(doc),
        notes=notes, decide=decide, legend=STATUS_LEGEND, set_base=SET_BASE, set_dpo=SET_DPO)


def claim_note(claim: dict, has_baseline: bool) -> str:
    """What the report says under a claim's statement: its reason, less what the row already
    shows elsewhere, so each fact appears once. An inconclusive claim's reason restates its
    values and intervals (the Measured column shows them; its checks say how many prompts would
    decide them); a regression's ``REGRESSED ...`` parts restate the Baseline column."""
    if claim.get("status") == "inconclusive":
        return ""
    reason = claim.get("reason") or ""
    if has_baseline and "REGRESSED " in reason:
        # suite joins the reason's parts with "; "; a REGRESSED part holds none itself.
        reason = "; ".join(part for part in reason.split("; ") if not part.startswith("REGRESSED "))
    return reason


def decide_note(check: dict, n_prompts: int | None) -> str:
    """For an inconclusive check: what would decide it (``verdicts.prompts_to_decide``)."""
    from .verdicts import MIN_CHUNKS, prompts_to_decide

    ci = check.get("ci")
    if not ci:
        return (f"no interval (at least {MIN_CHUNKS} prompt chunks and --bootstrap >= 20 are needed), so the "
                "gate cannot tell")
    need = None
    if n_prompts and None not in (check.get("value"), check.get("threshold"), *ci):
        need = prompts_to_decide(check["value"], ci[0], ci[1], check["threshold"], int(n_prompts))
    if need is None:
        return "the value sits on the threshold: more prompts will not decide it"
    return f"about {need} prompts (now {n_prompts}) would decide it if the effect stays the same"


def write_reports(result: SuiteResult) -> tuple[Path, Path]:
    """Write ``claims.html`` and ``claims.json`` atomically; returns their paths. In a
    data-parallel run only rank 0 writes (``mechclaims.distributed``)."""
    from .distributed import world

    html_path = Path(result.config.report)
    json_path = result.config.json_report
    if not world().is_writer:
        return html_path, json_path
    doc = build_document(result)
    text, html = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False), render_html(doc, figures(result))
    from .outputs import writing  # a full disk: OutputPathError naming the path and the reason

    with writing("the JSON beside --report", json_path):
        atomic_write_text(json_path, text)
    with writing("--report", html_path):
        atomic_write_text(html_path, html)
    return html_path, json_path
