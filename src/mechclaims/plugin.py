"""pytest plugin (``pytest11`` entry point ``mechclaims``): options, fixtures, report.

    pytest claims/                                  # the embedded GPT-2 organism pair
    pytest claims/ --model my-dpo-ckpt --base gpt2-medium --probe probe.pt --prompts prompts.jsonl

Options are parsed once into a frozen ``ClaimsConfig`` (command line > ``--claims-config``
> ``[tool.mechclaims]`` in the rootdir's pyproject.toml). The session computes the pair's
statistics and attribution once (through the engine's disk cache, so a second run does no
model work), evaluates every collected claim with a paired bootstrap, and writes
``reports/claims.html`` and ``claims.json`` at the end. Importing this module does not import
torch or transformers, so ``pytest --help`` stays fast.
"""

from __future__ import annotations

import os

import pytest

_OPTIONS = (
    ("--model", "model", "fine-tuned (DPO) model source: HF dir, hub id, BASE::WEIGHTS, or "
                         "organism:NAME (default: organism:gpt2)"),
    ("--base", "base", "base model source (default for organism models: the organism's base)"),
    ("--probe", "probe", "probe direction (.safetensors, .npy, .pt; default: the organism's)"),
    ("--prompts", "prompts", "prompts (.jsonl with 'prompt', or .txt; default: the organism's)"),
    ("--max-new-tokens", "max_new_tokens", "greedy tokens generated per prompt (default 20)"),
    ("--positions", "positions", "own (each model on its own continuation, the paper's) or shared "
                                 "(both on the DPO model's continuation)"),
    ("--device", "device", "cpu, cuda, cuda:1, ... (default cpu)"),
    ("--device-map", "device_map", "split a model larger than one device (Accelerate): auto, balanced, "
                                   "balanced_low_0, sequential, or a JSON object of module -> device; "
                                   "HF directories and hub ids only (default: the whole model on --device)"),
    ("--dtype", "dtype", "float32, bfloat16, float16, float64 (statistics are float64 always)"),
    ("--cache-dir", "cache_dir", "result cache directory (default: the user cache dir)"),
    ("--claims-config", "claims_config", "TOML file with settings and [thresholds] by claim ID"),
    ("--report", "report", "HTML report path (default reports/claims.html; claims.json beside it)"),
    ("--bootstrap", "bootstrap", "bootstrap resamples for the intervals (default 200)"),
    ("--scorer", "scorer", None),  # help from the scorer registry (mechclaims.scoring), at addoption
    ("--ppl-text", "ppl_text", "text file for perplexity (organisms: their held-out text)"),
    ("--patch-positions", "patch_positions", "where interventions act during generation: generated "
                                             "(the paper's: last prompt position + each new token) or all "
                                             "(the prompt too); perplexity always patches every position"),
    ("--baseline", "baseline", "a previous run's claims.json, or a model source run on the same base: a claim "
                               "fails when it regressed beyond its tolerance ([tool.mechclaims.regression])"),
)


def pytest_addoption(parser):
    group = parser.getgroup("mechclaims", "mechclaims claim suite")
    for flag, dest, help_ in _OPTIONS:
        group.addoption(flag, dest=f"mechclaims_{dest}", default=None, help=help_ or _scorer_help())
    # pytest owns --strict (its strict mode); we honour it too, and add an unambiguous alias.
    group.addoption("--claims-strict", dest="mechclaims_strict", action="store_true", default=None,
                    help="verdicts use the 95%% interval's pessimistic end, not the point estimate "
                         "(pytest's own --strict turns this on as well)")


def _scorer_help() -> str:
    # The scorer registry's own words; scoring imports numpy only, not torch.
    from .scoring import scorer_help

    return "toxicity scorer for the behavioural claims: " + scorer_help().replace("%", "%%")


class _State:
    def __init__(self):
        self.specs = {}
        self.run = None
        self.suite = None
        self.error = None          # the setup error that stopped the session, if any
        self.error_reported = False
        self.compute_seconds = None
        self.report_paths = None
        self.stale_removed = []


_KEY = pytest.StashKey[_State]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.stash[_KEY] = _State()
    _quiet_unless_rank0(config)
    config.addinivalue_line("markers", "mechclaims_claim(id): a mechclaims claim test (added automatically)")
    from .claim import TAGS

    for tag, meaning in TAGS.items():
        config.addinivalue_line("markers", f"{tag}: {meaning}")


def _quiet_unless_rank0(config) -> None:
    """Under torchrun every rank runs pytest; rank 0 speaks and writes (report, JSON, JUnit,
    pytest-html), the others compute their share in silence. Runs before the terminal
    reporter is made, so it writes to the null device."""
    from .distributed import world

    if world().is_writer:
        return
    import sys

    config.option.verbose = -2
    for opt in ("xmlpath", "htmlpath"):
        if hasattr(config.option, opt):
            setattr(config.option, opt, None)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank's process


def pytest_unconfigure(config):
    from .distributed import finish

    finish()


def _spec(item):
    return getattr(getattr(item, "function", None), "mechclaims_spec", None)


def pytest_itemcollected(item):
    spec = _spec(item)
    if spec is not None:
        item.add_marker(pytest.mark.mechclaims_claim(spec.id))
        for tag in spec.tags:  # gate, exploratory: `pytest claims/ -m gate`
            item.add_marker(getattr(pytest.mark, tag))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Runs after -k/-m deselection: only the selected claims are computed."""
    state = config.stash[_KEY]
    state.specs = {s.id: s for s in map(_spec, items) if s is not None}
    from .suite import PROBE_VALIDITY

    # The probe-validity claim runs first: every other claim reads the probe.
    items.sort(key=lambda it: getattr(_spec(it), "id", None) != PROBE_VALIDITY)
    if not state.specs:
        return
    from .config import build_config
    from .errors import MechclaimsError
    from .runspec import resolve_run
    from .suite import apply_thresholds

    cli = {dest: config.getoption(f"mechclaims_{dest}") for _, dest, _ in _OPTIONS}
    cli["strict"] = True if (config.getoption("mechclaims_strict") or _pytest_strict(config)) else None
    claims_config = cli.pop("claims_config")
    if cli.get("report"):
        cli["report"] = str(config.invocation_params.dir / cli["report"])
    try:
        cfg = build_config(cli, claims_config=claims_config,
                           pyproject=config.rootpath / "pyproject.toml")
        apply_thresholds(state.specs, cfg.thresholds)  # unknown IDs fail before any model work
        if not os.path.isabs(cfg.report):
            from dataclasses import replace

            cfg = replace(cfg, report=str(config.invocation_params.dir / cfg.report))
        _offline_unless_hub(cfg)
        state.run = resolve_run(cfg)  # every input resolved and checked; no weights loaded
    except MechclaimsError as exc:
        raise pytest.UsageError(f"mechclaims: {exc}") from None


def _pytest_strict(config) -> bool:
    try:
        return bool(config.getini("strict"))
    except (ValueError, KeyError):
        return False


def _offline_unless_hub(cfg) -> None:
    """Go offline (before transformers is imported) unless the user named a hub id."""
    from .sources import parse_source

    kinds = set()
    for src in (cfg.base, cfg.model):
        try:
            kinds.add(parse_source(src, base=cfg.base).kind)
        except Exception:  # noqa: BLE001 - reported properly when the models load
            pass
    if "hub" not in kinds:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _Verifier:
    """Function-scoped view of the session suite: verifies one claim for one test item."""

    def __init__(self, state, node):
        self._state, self._node = state, node

    def verify(self, cid: str) -> None:
        state = self._state
        if state.error is not None:
            if state.error_reported:
                pytest.skip("mechclaims stopped: the setup error is reported once, above")
            self._stop(state.error)
        if state.suite is None:  # not computed before the loop (e.g. the test was called directly)
            _compute(state, self._node.session)
            if state.error is not None:
                self._stop(state.error)
        r = state.suite.result(cid)
        props = self._node.user_properties
        props.append(("claim_id", cid))
        for c in r.checks:
            n = c.check.name
            props.extend([(f"{n}.value", _num(c.value)), (f"{n}.ci_low", _num(c.lo)), (f"{n}.ci_high", _num(c.hi)),
                          (f"{n}.op", c.check.op), (f"{n}.threshold", _num(c.check.threshold)),
                          (f"{n}.verdict", "pass" if (c.holds_strict if r.strict else c.holds) else "fail"),
                          (f"{n}.unstable", str(c.unstable).lower())])
            if c.baseline is not None:
                cb = c.baseline
                props.extend([(f"{n}.baseline", _num(cb.baseline)), (f"{n}.diff", _num(cb.diff)),
                              (f"{n}.diff_ci_low", _num(cb.lo)), (f"{n}.diff_ci_high", _num(cb.hi)),
                              (f"{n}.tolerance", _num(cb.tolerance)), (f"{n}.regressed", str(cb.regressed).lower())])
        prov = state.suite.analysis.provenance
        props.extend([("verdict", r.status), ("unstable", str(r.unstable).lower()),
                      ("regressed", str(r.regressed).lower()),
                      ("model_sha256", prov["model"]["sha256"]), ("base_sha256", prov["base"]["sha256"])])
        if r.status == "skip":
            pytest.skip(f"{cid} does not apply: {r.reason}")
        flags = "".join(f" [{f}]" for f in r.flags)
        if r.status == "fail":
            pytest.fail(r.message() + (f" — {r.reason}" if r.reason else "") + flags, pytrace=False)

    def _stop(self, exc: BaseException) -> None:
        """A broken setup stops the session once: one message, exit status 4 (usage error)."""
        from .errors import MechclaimsError

        state = self._state
        state.error, state.error_reported = exc, True
        session = self._node.session
        session.shouldstop = "mechclaims could not compute the analysis"
        kind = "" if isinstance(exc, MechclaimsError) else f"{type(exc).__name__}: "
        pytest.fail(f"mechclaims could not compute the analysis, so no claim was checked: {kind}{exc}",
                    pytrace=False)


def _num(x: float) -> str:
    """A plain number for dashboards: repr of the float; NaN/inf as the words JUnit readers take."""
    import math

    return repr(float(x)) if math.isfinite(x) else str(float(x)).lower()


def _compute(state, session) -> None:
    """Everything the selected claims need, once, before the first claim test runs; its time
    goes to a suite-level JUnit property, not to the first test case."""
    import time

    from .suite import ClaimSuite

    t0 = time.perf_counter()
    suite = ClaimSuite(state.run, state.specs)
    try:
        suite.compute()
    except Exception as exc:  # noqa: BLE001 - any failure to compute is a broken setup
        state.error = exc
        return
    finally:
        state.compute_seconds = time.perf_counter() - t0
    state.suite = suite
    try:
        from _pytest.junitxml import xml_key

        xml = session.config.stash.get(xml_key, None)
    except ImportError:  # pragma: no cover - pytest internals moved
        xml = None
    if xml is not None:
        xml.add_global_property("mechclaims_compute_seconds", f"{state.compute_seconds:.3f}")
        xml.add_global_property("mechclaims_from_cache", str(suite.analysis.provenance["from_cache"]).lower())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session):
    state = session.config.stash.get(_KEY, None)
    if (state is not None and state.run is not None and state.specs and session.items
            and not session.config.option.collectonly):
        _compute(state, session)
    yield


@pytest.fixture
def mechclaims_claims(request):
    state = request.config.stash[_KEY]
    if state.run is None:
        pytest.fail("mechclaims: no configuration (was the claim collected by the plugin?)", pytrace=False)
    return _Verifier(state, request.node)


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_KEY, None)
    if state is None:
        return
    if state.error is not None:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        from .distributed import world

        if world().is_writer:
            _remove_stale_reports(state)
        return
    if state.suite is None or not state.suite.verified:
        return
    from .report import write_reports

    state.report_paths = write_reports(state.suite.suite_result())


def _remove_stale_reports(state) -> None:
    """A run that could not compute leaves no earlier run's report behind looking current."""
    from pathlib import Path

    for p in (Path(state.run.config.report), state.run.json_report):
        if p.is_file():
            p.unlink()
            state.stale_removed.append(str(p))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_KEY, None)
    if state is not None and state.error is not None:
        terminalreporter.write_sep("-", "mechclaims")
        terminalreporter.write_line(f"setup error (exit status 4): {state.error}")
        for p in state.stale_removed:
            terminalreporter.write_line(f"removed the earlier run's report {p}: it no longer describes this setup")
    paths = getattr(state, "report_paths", None)
    if paths:
        suite = state.suite
        unstable = [c for c in suite.verified_unique() if suite.results[c].unstable]
        terminalreporter.write_sep("-", "mechclaims")
        terminalreporter.write_line(f"claim report: {paths[0]}")
        terminalreporter.write_line(f"claim data:   {paths[1]}")
        if unstable:
            terminalreporter.write_line(f"unstable (interval straddles the threshold): {', '.join(unstable)}")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix, summary, postfix, session):
    state = session.config.stash.get(_KEY, None)
    paths = getattr(state, "report_paths", None)
    if paths:
        prefix.append(f"<p>mechclaims claim report: <a href='{paths[0]}'>{paths[0]}</a></p>")
