"""pytest plugin (``pytest11`` entry point ``mechclaims``): options, fixtures, report.

    pytest claims/                                  # the embedded GPT-2 organism pair
    pytest claims/ --model my-dpo-ckpt --base gpt2-medium --probe probe.pt --prompts prompts.jsonl

Options are parsed once into a frozen ``ClaimsConfig`` (command line > ``--claims-config``
> ``[tool.mechclaims]`` in the rootdir's pyproject.toml). The session computes the pair's
statistics and attribution once (through the engine's disk cache, so a second run does no
model work), evaluates every collected claim with a paired bootstrap, and writes
``reports/claims.html`` and ``claims.json`` at the end. Importing this module does not import
torch or transformers, so ``pytest --help`` stays fast.

What CI sees: an earlier run's report at the report path is deleted once the inputs resolve (a
file there that is not a mechclaims report stops the run instead: it is never deleted); a setup
error (exit status 4) is one JUnit error test case, ``mechclaims::setup``; every run ends with one
verdict line naming claims by ID, and appends a markdown summary to ``$GITHUB_STEP_SUMMARY`` when
that is set (``mechclaims.summary``).
"""

from __future__ import annotations

import os

import pytest

from .options import OPTIONS, add_short_options, prefixed, scorer_option_help  # noqa: F401  (add_short_options: claims/conftest.py)


def pytest_addoption(parser):
    group = parser.getgroup("mechclaims", "mechclaims claim suite")
    for flag, dest, help_ in OPTIONS:
        group.addoption(prefixed(flag), dest=f"mechclaims_{dest}", default=None, help=help_ or scorer_option_help())
    # pytest owns --strict (its strict mode); we honour it too, and add an unambiguous alias.
    group.addoption("--claims-strict", dest="mechclaims_strict", action="store_true", default=None,
                    help="verdicts use the 95%% interval's pessimistic end, not the point estimate "
                         "(pytest's own --strict turns this on as well)")


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
        # CI visibility (mechclaims.summary): the configuration as resolved (kept when resolving the
        # inputs fails, for the report path), the message of a mechclaims usage error, what was left
        # alone at the report path, the claims.json written, and where the markdown summary went.
        self.config = None
        self.setup_error = None
        self.stale_kept = []
        self.document = None
        self.step_summary = None
        self.write_error = None    # the report could not be written (a full disk): exit status 4


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A claim skipped by the plugin is reported at the claim's own file, not at a line of this
    module's source (JUnit and -ra would otherwise show the installed plugin's absolute path)."""
    outcome = yield
    report = outcome.get_result()
    if _spec(item) is not None and report.skipped and isinstance(report.longrepr, tuple):
        from .provenance import display_path

        _, _, reason = report.longrepr
        code = getattr(_spec(item).metric, "__code__", None)
        report.longrepr = (display_path(str(item.path)), code.co_firstlineno if code else 0, reason)


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
    if _refuse_xdist(config, items):
        return
    from .config import build_config
    from .errors import MechclaimsError
    from .runspec import resolve_run
    from .suite import apply_thresholds

    cli = {dest: config.getoption(f"mechclaims_{dest}") for _, dest, _ in OPTIONS}
    cli["strict"] = True if (config.getoption("mechclaims_strict") or _pytest_strict(config)) else None
    # "auto": the gate's interval reading when the run selects the gate (-m gate), else the paper's.
    gate_selected = "gate" in (getattr(config.option, "markexpr", "") or "").replace("not gate", "")
    claims_config = cli.pop("claims_config")
    if cli.get("report"):
        cli["report"] = str(config.invocation_params.dir / cli["report"])
    try:
        cfg = build_config(cli, claims_config=claims_config,
                           pyproject=config.rootpath / "pyproject.toml")
        apply_thresholds(state.specs, cfg.thresholds)  # unknown IDs fail before any model work
        if cfg.reading == "auto":
            from dataclasses import replace

            from .verdicts import resolve_reading

            cfg = replace(cfg, reading=resolve_reading("auto", strict=cfg.strict, gate_selected=gate_selected))
        if not os.path.isabs(cfg.report):
            from dataclasses import replace

            cfg = replace(cfg, report=str(config.invocation_params.dir / cfg.report))
        state.config = cfg  # the report path, even if resolving the inputs fails (_clear_previous_reports)
        _offline_unless_hub(cfg)
        _check_pytest_outputs(config, None, cfg, items, claims_config)  # pytest's writers, before resolving can fail
        state.run = resolve_run(cfg)  # every input resolved and checked; no weights loaded
        _check_pytest_outputs(config, state.run, cfg, items, claims_config)
    except MechclaimsError as exc:
        raise pytest.UsageError(f"mechclaims: {exc}") from None


_XDIST_REFUSAL = ("mechclaims: run the claims without -n; the statistics are computed once per session, and "
                  "data parallel runs use torchrun (see mechclaims.distributed).")
_XDIST_NODEID = "mechclaims (pytest -n)"


def _refuse_xdist(config, items) -> bool:
    """pytest-xdist would split the claims over workers: each would compute the statistics on
    its own and write a report of its share only. The controller collects nothing, so a worker
    that collected claims drops all its items (no model work) and sends one failed collection
    report; the controller turns it into a usage error (exit status 4), ``_XdistController``."""
    if not hasattr(config, "workerinput"):
        return False
    config.hook.pytest_collectreport(report=pytest.CollectReport(_XDIST_NODEID, "failed", _XDIST_REFUSAL, []))
    config.hook.pytest_deselected(items=list(items))
    items[:] = []
    return True


class _XdistController:
    """Registered on the xdist controller (``pytest -n``): stops the session when a worker reports
    that it collected claims."""

    def pytest_collectreport(self, report):
        if report.nodeid == _XDIST_NODEID:
            raise pytest.UsageError(_XDIST_REFUSAL)


def pytest_sessionstart(session):
    if session.config.pluginmanager.hasplugin("dsession"):  # xdist's controller of a -n run
        session.config.pluginmanager.register(_XdistController(), "mechclaims-xdist")


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Once the claims are selected and their inputs resolved, an earlier run's report goes: a run
    that then fails, or is killed (SIGTERM, SIGKILL, out of memory), leaves nothing that looks
    current. A mechclaims usage error raised while collecting (an input that does not resolve) is
    kept, so the JUnit file and the job summary carry it (``pytest_sessionfinish``)."""
    config = session.config
    state = config.stash.get(_KEY, None)
    try:
        result = yield
    except pytest.UsageError as exc:
        if state is not None and state.specs and str(exc).startswith("mechclaims"):
            state.setup_error = str(exc)
            _clear_previous_reports(config, state, refuse=False)
        raise
    if state is not None and state.run is not None:
        try:
            _clear_previous_reports(config, state, refuse=True)
        except pytest.UsageError as exc:
            state.setup_error = str(exc)
            raise
    return result


def _clear_previous_reports(config, state, *, refuse: bool) -> None:
    """Delete the claims.html / claims.json an earlier run left at this run's report path.

    Only regular files that are mechclaims reports go (the JSON's ``schema``, the HTML's title;
    ``outputs.not_a_report``), and never a path this run reads. Anything else there is user data: with
    ``refuse`` (the inputs resolved, the run would replace it at the end) the run stops with a
    usage error before any model work; without (the run already failed) it is left alone."""
    from pathlib import Path

    from .distributed import world
    from .outputs import not_a_report

    cfg = state.run.config if state.run is not None else state.config
    if cfg is None or config.option.collectonly or not world().is_writer:
        return
    if state.run is None and not _clear_of_inputs(cfg):
        return  # resolving failed before the outputs were checked against the inputs: touch nothing
    for p in (Path(cfg.report), Path(cfg.json_report)):
        if not os.path.lexists(p):
            continue
        why = not_a_report(p)
        if why is None:
            p.unlink()
            state.stale_removed.append(str(p))
        elif refuse:
            raise pytest.UsageError(
                f"mechclaims: the report path {p} holds a file that is not a mechclaims report ({why}); the run "
                f"would replace it with its claims.html / claims.json. Move that file away or choose another "
                f"--report.")
        else:
            state.stale_kept.append((str(p), why))


def _clear_of_inputs(cfg) -> bool:
    """The report paths are no input the configuration names (``mechclaims.outputs``, as
    ``runspec`` checks them once the inputs resolve). In doubt (the inputs cannot even be
    named), False."""
    from .outputs import Output, check, config_inputs
    from .runspec import organism_defaults

    try:
        check([Output("--report", cfg.report), Output("--report (claims.json)", cfg.json_report)],
              config_inputs(cfg, organism_defaults(cfg)[0]))
    except Exception:  # noqa: BLE001 - an input, or not checkable: never delete
        return False
    return True


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
        props.extend([("claim_id", cid), ("pack", r.spec.pack)])  # the testcase's classname is the pack's module too
        for c in r.checks:
            n = c.check.name
            lo, hi = (_num(c.lo), _num(c.hi)) if c.has_interval else ("none", "none")
            props.extend([(f"{n}.value", _num(c.value)), (f"{n}.ci_low", lo), (f"{n}.ci_high", hi),
                          (f"{n}.op", c.check.op), (f"{n}.threshold", _num(c.check.threshold)),
                          (f"{n}.verdict", c.verdict), (f"{n}.unstable", str(c.unstable).lower())])
            if c.baseline is not None:
                cb = c.baseline
                blo, bhi = (_num(cb.lo), _num(cb.hi)) if cb.lo is not None else ("none", "none")
                props.extend([(f"{n}.baseline", _num(cb.baseline)), (f"{n}.diff", _num(cb.diff)),
                              (f"{n}.diff_ci_low", blo), (f"{n}.diff_ci_high", bhi),
                              (f"{n}.tolerance", _num(cb.tolerance)), (f"{n}.baseline_state", cb.state),
                              (f"{n}.regressed", str(cb.regressed).lower())])
        prov = state.suite.analysis.provenance
        props.extend([("verdict", r.status), ("outcome", r.outcome), ("unstable", str(r.unstable).lower()),
                      ("regressed", str(r.regressed).lower()), ("known_failure", r.known_failure),
                      ("model_sha256", prov["model"]["sha256"]), ("base_sha256", prov["base"]["sha256"])])
        outcome = r.outcome
        if outcome == "skipped":
            pytest.skip(f"{cid} does not apply: {r.reason}")
        flags = "".join(f" [{f}]" for f in r.flags)
        said = r.reason and r.checks and r.status != "inconclusive"  # an inconclusive check says it inline
        text = r.message() + (f" — {r.reason}" if said else "") + flags
        if outcome == "xfailed":
            pytest.xfail(f"{r.known_failure} — {text}")
        if outcome == "failed":
            label = {"not_checked": "NOT CHECKED", "not_meaningful": "NOT MEANINGFUL",
                     "inconclusive": "INCONCLUSIVE"}.get(r.status)
            pytest.fail((f"[{label}] " if label else "") + text, pytrace=False)

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


@pytest.hookimpl(tryfirst=True)  # before pytest's JUnit writer, which the setup error is added to
def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_KEY, None)
    if state is None:
        return
    from .distributed import world

    if state.error is not None or state.setup_error is not None:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        if world().is_writer:
            from .summary import setup_error_markdown

            message = _setup_message(state)
            _junit_setup_error(session, message)
            _append_step_summary(state, setup_error_markdown(message))
        return
    if state.suite is None or not state.suite.verified:
        return
    from .errors import MechclaimsError
    from .report import write_reports

    result = state.suite.suite_result()
    try:
        state.report_paths = write_reports(result)
    except (OSError, MechclaimsError) as exc:  # a full disk at the end: exit 4 and one message, not INTERNALERROR
        _report_not_written(session, state, exc)
        return
    if world().is_writer:
        state.document = _read_document(state.report_paths[1])
        if state.document is not None:
            from .summary import markdown

            _append_step_summary(state, markdown(state.document))


def _check_pytest_outputs(config, run, cfg, items, claims_config) -> None:
    """What pytest writes (``--junitxml``, pytest-html's ``--html``) against every input, the
    report and each other, as the report is (``mechclaims.outputs``); the claims config,
    pyproject.toml and the selected test files are inputs too. ``run=None``: against the inputs
    as the configuration names them, before resolving them can fail. pytest writes these files
    at the session's end even after a usage error, so a refused one is not written at all."""
    from .errors import OutputPathError
    from .outputs import check, config_inputs, inputs, pytest_outputs
    from .runspec import check_outputs, organism_defaults

    outs = pytest_outputs(config.option)
    if not outs:
        return
    pyproject = config.rootpath / "pyproject.toml"
    read = inputs([("--claims-config", claims_config), ("pyproject.toml", pyproject if pyproject.is_file() else None)]
                  + [("a collected test file", it.path) for it in items])
    try:
        if run is None:
            check(outs, config_inputs(cfg, organism_defaults(cfg)[0]) + read)
        else:
            check_outputs(run, outs, read)
    except OutputPathError as exc:
        _silence_pytest_writers(config, getattr(exc, "options", ()))
        raise


def _silence_pytest_writers(config, options) -> None:
    """Unregister pytest's JUnit writer and pytest-html's report when their path was refused."""
    if "--junitxml" in options:
        from _pytest.junitxml import xml_key

        xml = config.stash.get(xml_key, None)
        if xml is not None:
            del config.stash[xml_key]
            config.pluginmanager.unregister(xml)
    if "--html" in options:
        for plugin in list(config.pluginmanager.get_plugins()):
            if type(plugin).__module__.startswith("pytest_html.") and hasattr(plugin, "_generate_report"):
                config.pluginmanager.unregister(plugin)


def _report_not_written(session, state, exc) -> None:
    """The claims were checked but their report could not be written (a full disk, a directory
    removed during the run): exit status 4 with the path and the system's reason. The atomic
    writes left no partial file; a claims.json without its claims.html does not stay either."""
    from pathlib import Path

    state.write_error = str(exc)
    session.exitstatus = pytest.ExitCode.USAGE_ERROR
    cfg = state.run.config
    for p in (Path(cfg.report), Path(cfg.json_report)):
        if p.is_file() and not p.is_symlink():  # earlier reports went at collection: these are this run's
            p.unlink()
    _junit_setup_error(session, f"mechclaims: the claims were checked, but {exc}")


def _setup_message(state) -> str:
    if state.setup_error is not None:
        return state.setup_error
    from .errors import MechclaimsError

    exc = state.error
    kind = "" if isinstance(exc, MechclaimsError) else f"{type(exc).__name__}: "
    return f"mechclaims could not compute the analysis, so no claim was checked: {kind}{exc}"


def _junit_setup_error(session, message: str) -> None:
    """A setup error as one error test case, ``mechclaims::setup`` (JUnit classname ``mechclaims``,
    name ``setup``): pytest's JUnit file of a run that stopped at collection has no test at all
    (``tests="0" errors="0"``), which a CI check shows as green. Handed to every reporter as a
    failed setup, so pytest's summary line, pytest-html and JUnit all count one error."""
    hook = session.config.hook
    where = ("mechclaims", None, "setup")
    hook.pytest_runtest_logreport(report=pytest.TestReport(
        "mechclaims::setup", where, {}, "failed", message, "setup"))
    hook.pytest_runtest_logreport(report=pytest.TestReport(
        "mechclaims::setup", where, {}, "passed", None, "teardown"))


def _read_document(path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _append_step_summary(state, text: str) -> None:
    """Append to the file GitHub Actions names in ``$GITHUB_STEP_SUMMARY`` (the job's summary
    page; GitHub expects appends). A summary that cannot be written is said, not fatal."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        state.step_summary = f"appended the summary to $GITHUB_STEP_SUMMARY ({path})"
    except OSError as exc:
        state.step_summary = f"could not append to $GITHUB_STEP_SUMMARY ({path}): {exc}"


@pytest.hookimpl(trylast=True)  # the verdict comes last, after other plugins' summaries
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_KEY, None)
    if state is None:
        return
    from .summary import setup_error_line, verdict, verdict_line

    lines = [f"removed the earlier run's report {p}: it would no longer describe this run"
             for p in state.stale_removed]
    lines += [f"left {p} alone: not a mechclaims report ({why})" for p, why in state.stale_kept]
    failed = state.error is not None or state.setup_error is not None  # the verdict line says what
    if state.report_paths:
        suite = state.suite
        unstable = [c for c in suite.verified_unique() if suite.results[c].unstable]
        lines += [f"claim report: {state.report_paths[0]}", f"claim data:   {state.report_paths[1]}"]
        if unstable:
            lines.append(f"unstable (interval straddles the threshold): {', '.join(unstable)}")
    if state.step_summary:
        lines.append(state.step_summary)
    final = None  # one verdict line, the last thing mechclaims says
    if state.write_error is not None:
        final = (f"mechclaims: REPORT NOT WRITTEN (exit status 4) — the claims were checked, but {state.write_error}",
                 {"red": True})
    elif failed:
        final = (setup_error_line(_setup_message(state)), {"red": True})
    elif state.document is not None:
        final = (verdict_line(state.document), {"red" if verdict(state.document) == "FAILED" else "green": True})
    if not lines and final is None:
        return
    terminalreporter.write_sep("-", "mechclaims")
    for line in lines:
        terminalreporter.write_line(line)
    if final is not None:
        terminalreporter.write_line(final[0], bold=True, **final[1])


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix, summary, postfix, session):
    state = session.config.stash.get(_KEY, None)
    paths = getattr(state, "report_paths", None)
    if paths:
        prefix.append(f"<p>mechclaims claim report: <a href='{paths[0]}'>{paths[0]}</a></p>")
