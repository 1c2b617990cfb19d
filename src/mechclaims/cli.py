"""``mechclaims`` command line.

    mechclaims neurons --base B --model M --probe P --prompts F [--positions own|shared]
                       [--max-new-tokens N] --out neurons.csv
    mechclaims parity  --model M [--base B]
    mechclaims probe train --model BASE --data labelled.jsonl|csv --out probe.safetensors
                       [--text-column text] [--label-column label] [--test-size 0.2] [--seed 0]
    mechclaims sweep   --base B CKPT... | RUN_DIR [--select all|gate|IDS] [-k EXPR] [--baseline B]
                       [--strict] [--junitxml sweep.xml] [--report reports/sweep.html]
    mechclaims check   [pytest options: --model M --base B --probe P --prompts F -k ... ...]
    mechclaims packs
    mechclaims diff    A.json B.json [--markdown] [--html diff.html]

``mechclaims check`` is ``pytest`` on the built-in claims (``mechclaims.claims_dir()``) and every
installed claim pack (entry-point group ``mechclaims.packs``; not when you name paths of your own),
from any directory, with the options of ``pytest claims/`` in a checkout; its exit status is
pytest's. ``mechclaims packs`` lists those packs with their papers.

Exit status, as pytest's: 0 done (sweep: the last checkpoint passes every gating claim), 1 the
last checkpoint fails a gating claim (``diff``: a claim regressed from A to B), 2 arguments argparse
cannot parse, 4 a broken setup, in one line that says what to fix: a missing or bad input (probe,
prompts, model, --select, -k, --baseline, a report ``diff`` refuses), or an output that would
overwrite an input or another output, is not a regular file, or cannot be written (checked before
any model work; a disk that fills while writing says so too: ``mechclaims.outputs``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .choices import DTYPES, POSITION_MODES
from .errors import MechclaimsError, OutputPathError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="model dtype; statistics are always accumulated in float64")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mechclaims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    n = sub.add_parser("neurons", help="per-neuron attribution table of a (base, DPO) pair")
    n.add_argument("--base", default="", help="base model source (default, as for pytest claims/: an organism's "
                                               "base, or the base an adapter or checkpoint names)")
    n.add_argument("--model", required=True, help="fine-tuned model source (or a weights file for --base)")
    n.add_argument("--probe", default="", help="probe file (.safetensors, .npy, .pt; default: an organism's)")
    n.add_argument("--prompts", default="", help="prompts (.jsonl with a 'prompt' field, or .txt; default: an "
                                                 "organism's)")
    n.add_argument("--positions", default="own", choices=POSITION_MODES,
                   help="own: each model on its own greedy continuation (paper); "
                        "shared: both on the model's continuation (Lee et al.)")
    n.add_argument("--max-new-tokens", type=int, default=20)
    n.add_argument("--max-prompt-tokens", type=int, default=32)
    n.add_argument("--batch-size", type=int, default=32)
    n.add_argument("--chunks", type=int, default=32, help="prompt chunks kept as partial sums (bootstrap units)")
    n.add_argument("--cache-dir", default=None, help="result cache (default: the user cache dir)")
    n.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    n.add_argument("--parity", action="store_true", help="check bridge logits against plain transformers first")
    n.add_argument("--out", required=True, help="CSV path; a JSON sidecar is written beside it")
    _common(n)

    q = sub.add_parser("parity", help="check that bridge logits equal plain transformers logits")
    q.add_argument("--model", required=True)
    q.add_argument("--base", default=None, help="needed when --model is a bare weights file")
    _common(q)

    pr = sub.add_parser("probe", help="train a toxic/clean probe for a model")
    psub = pr.add_subparsers(dest="probe_command", required=True)
    t = psub.add_parser("train", help="logistic-regression probe on labelled texts (e.g. Jigsaw's train.csv)")
    t.add_argument("--model", required=True, help="the BASE model source the probe reads")
    t.add_argument("--data", required=True,
                   help="labelled texts: .jsonl (one object per line) or .csv (header row)")
    t.add_argument("--out", required=True, help="probe file to write (.safetensors)")
    t.add_argument("--text-column", default=None, help="default: the first of text, comment_text, prompt")
    t.add_argument("--label-column", default=None,
                   help="0 = clean, 1 = toxic; default: the first of label, toxic, is_toxic")
    t.add_argument("--test-size", type=float, default=0.2, help="held-out share, stratified (0.2)")
    t.add_argument("--seed", type=int, default=0, help="seed of the train/test split (0)")
    _common(t)

    # Parsed by pytest, not here (_main hands everything after `check` to pytest.main).
    sub.add_parser("check", add_help=False,
                   help="the built-in claims and the installed claim packs, from any directory: pytest on "
                        "mechclaims.claims_dir() and each pack's directory with the given pytest options "
                        "(--model, --base, --probe, --prompts, -k ...); `mechclaims check --help` lists them")
    sub.add_parser("packs", help="the claim packs `mechclaims check` runs, with their papers: the built-in ones "
                                 "and those installed packages add (entry-point group mechclaims.packs); exit 4 "
                                 "when a plug-in is broken",
                   description="List the built-in claim packs and the installed ones (entry-point group "
                               "mechclaims.packs: docs/extending.md), each with its papers and directory.")

    d = sub.add_parser("diff", help="what changed between two claims.json reports (no model is run); exit 1 "
                                    "when a claim regressed from A to B")
    d.add_argument("a", metavar="A.json", help="the reference report (a release's claims.json)")
    d.add_argument("b", metavar="B.json", help="the candidate's claims.json, made on the same base, prompts and probe")
    d.add_argument("--markdown", action="store_true", help="print markdown (a table) instead of text")
    d.add_argument("--html", default=None, metavar="OUT", help="also write the comparison as an HTML page")

    s = sub.add_parser("sweep", help="the claims on every checkpoint of a training run, one report")
    s.add_argument("checkpoints", nargs="+", help="checkpoint sources, globs, or a trainer output directory "
                                                  "(its checkpoint-N folders, in step order)")
    s.add_argument("--base", default=None, help="base model source (default: from the adapters' config, "
                                                "or [tool.mechclaims] base)")
    s.add_argument("--probe", default=None, help="probe file (default: [tool.mechclaims] probe)")
    s.add_argument("--prompts", default=None, help="prompt file (default: [tool.mechclaims] prompts)")
    s.add_argument("--claims-dir", default=None, help="directory of claim tests (default: the built-in claims, "
                                                      "mechclaims.claims_dir())")
    s.add_argument("--select", default="all", metavar="all|gate|IDS",
                   help="all claims (default), only the gate (read with the 95%% interval, as pytest -m gate), "
                        "or claim IDs separated by commas (C0,C3)")
    s.add_argument("-k", dest="keyword", default=None, metavar="EXPR",
                   help="only the claims matching a keyword expression, as pytest -k: claim IDs, slugs, test "
                        "names or tags with and, or, not, parentheses (\"C0 or C3\", \"gate and not C5\")")
    s.add_argument("--baseline", default=None, help="a previous run's claims.json, or a model source run on the "
                                                    "same base, as pytest --baseline: each checkpoint is compared")
    s.add_argument("--strict", action="store_true", default=None,
                   help="the interval reading for every claim (as pytest --claims-strict)")
    s.add_argument("--reading", default=None, choices=("auto", "point", "interval"),
                   help="how verdicts read a check (default auto: interval with --select gate, else point)")
    s.add_argument("--junitxml", default=None, metavar="PATH",
                   help="also write JUnit XML: one testsuite per checkpoint, one testcase per claim")
    s.add_argument("--report", default="reports/sweep.html", help="HTML report; sweep.json beside it")
    s.add_argument("--claims-config", default=None, help="TOML file with settings and [thresholds]")
    for flag in ("--positions", "--max-new-tokens", "--bootstrap", "--scorer", "--ppl-text", "--cache-dir",
                 "--patch-positions"):
        s.add_argument(flag, default=None, help="as for pytest claims/")
    _common(s)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .distributed import finish

    try:
        return _main(argv)
    finally:
        finish()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        try:
            return _check(argv[1:])
        except MechclaimsError as exc:  # no built-in claims to run
            print(f"mechclaims: error: {exc}", file=sys.stderr)
            return 4
    parser = build_parser()
    if argv[:1] in (["-h"], ["--help"]):  # the packs a `check` runs; plug-ins are imported for help only
        from .pack_plugins import packs_help

        parser.epilog = packs_help() + "; `mechclaims packs` lists them with their papers."
    args = parser.parse_args(argv)
    from .distributed import world

    if not world().is_writer:  # under torchrun, rank 0 speaks and writes; the others compute
        import os

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank's process
    try:
        if args.command == "neurons":
            return _neurons(args)
        if args.command == "parity":
            from .loading import load_model, parity_check

            m = load_model(args.model, device=args.device, dtype=args.dtype, base=args.base)
            print(json.dumps({"model": m.source, "max_abs_logit_diff": parity_check(m)}))
            return 0
        if args.command == "probe" and args.probe_command == "train":
            return _probe_train(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "diff":
            return _diff(args)
        if args.command == "packs":
            from .pack_plugins import packs_text

            sys.stdout.write(packs_text())
            return 0
    except OutputPathError as exc:  # an output onto an input, or one that cannot be written: exit 4, one line
        print(f"mechclaims: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 4
    except MechclaimsError as exc:  # a broken setup, as pytest's exit 4
        print(f"mechclaims: error: {exc}", file=sys.stderr)
        return 4
    return 1


def _check_outputs(outs: list, files: list, sources: list, cache_dir=None) -> None:
    """Before any model work: every output against every input and each other (``mechclaims.outputs``).
    ``files``: ``[(option, path)]``; ``sources``: ``[(option, model source, its base)]``."""
    from .outputs import CACHE, Input, check, inputs, named_source_inputs

    ins = inputs(files)
    for opt, src, base in sources:
        ins += named_source_inputs(opt, src, base)
    if cache_dir:
        ins.append(Input("--cache-dir", cache_dir, CACHE))
    check(outs, ins)


def _neurons(args) -> int:
    from .analysis import analyze, sidecar_path, write_neuron_csv
    from .cache import default_cache_dir
    from .outputs import Output, writing
    from .stats import StatsSettings

    # The one door: the same resolution as pytest claims/ (organism defaults, the base an adapter
    # names, every cheap check before any weight), then the resolved records go down.
    from .config import build_config
    from .runspec import resolve_run

    run = resolve_run(build_config({"model": args.model, "base": args.base, "probe": args.probe,
                                    "prompts": args.prompts, "positions": args.positions,
                                    "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens,
                                    "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
                                    "cache_dir": args.cache_dir}), report=False, cache=not args.no_cache)
    base = args.base or str(run.base)
    _check_outputs([Output("--out", args.out), Output("the JSON beside --out", sidecar_path(args.out))],
                   [("--probe", run.probe_path), ("--prompts", run.prompts_path)],
                   [("--base", base, None), ("--model", args.model, base)],
                   cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()))
    settings = StatsSettings(positions=args.positions, max_new_tokens=args.max_new_tokens,
                             max_prompt_tokens=args.max_prompt_tokens, max_chunks=args.chunks,
                             batch_size=args.batch_size)
    cache_dir = None if args.no_cache else (run.cache_dir or True)
    result = analyze(run.base, run.model, run.probe, list(run.prompts), settings, device=args.device,
                     dtype=args.dtype, cache_dir=cache_dir, check_parity=args.parity)
    with writing("--out", args.out):
        sidecar = write_neuron_csv(result, args.out)
    s = result.summary
    print(f"wrote {args.out} ({s['n_neurons']} neurons) and {sidecar}"
          f"{' [from cache]' if result.provenance['from_cache'] else ''}")
    print(f"net delta {s['net']:.6g}, gross reduction {s['gross_reduction']:.6g}, "
          f"gross increase {s['gross_increase']:.6g}, "
          f"v2 toxic-neuron share {s['toxic_neurons_v2']['share']:.3f}")
    return 0


def _probe_train(args) -> int:
    import math
    from pathlib import Path

    from .cache import sha256_file
    from .errors import ProbeError
    from .outputs import Output, writing
    from .probe import read_labelled, train_probe

    out = Path(args.out).expanduser()
    _check_outputs([Output("--out", out)], [("--data", args.data)], [("--model", args.model, None)])
    if out.suffix.lower() != ".safetensors":
        raise ProbeError(f"got --out {args.out!r}; expected a path ending in .safetensors (the probe "
                         "format that keeps its metadata); use e.g. probe.safetensors.")
    if not 0.0 < args.test_size < 1.0:
        raise ProbeError(f"got --test-size {args.test_size}; expected a share strictly between 0 and 1; "
                         "use e.g. 0.2.")
    texts, labels = read_labelled(args.data, args.text_column, args.label_column)
    n_test = math.ceil(args.test_size * len(labels))  # as sklearn's train_test_split rounds
    if n_test < 2 or len(labels) - n_test < 2:
        raise ProbeError(f"got --test-size {args.test_size} on {len(labels)} rows: {n_test} held out and "
                         f"{len(labels) - n_test} to train; expected at least 2 in each part (the split is "
                         "stratified: one of each class); change --test-size or add rows.")
    from .loading import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    probe = train_probe(model, texts, labels, test_size=args.test_size, seed=args.seed)
    probe.metadata.update(data_path=args.data, data_sha256=sha256_file(args.data))
    with writing("--out", out):
        probe.save(out)
    m = probe.metadata
    print(f"wrote {args.out} (d_model {probe.d_model}): held-out accuracy {m['heldout_accuracy']:.4f} "
          f"(n_train {m['n_train']}, n_test {m['n_test']})")
    if m["heldout_accuracy"] < 0.90:
        print("note: below 0.90, so claim C24 (probe-validity) fails with this probe at its default threshold.")
    return 0


def _check(pytest_args: list[str]) -> int:
    """``python -m pytest <built-in claims> ARGS <installed packs>``; its exit status. The rootdir
    is the working directory (unless given), so its pyproject.toml's ``[tool.mechclaims]``
    applies and pytest writes nothing into the installed package; the claims' conftest gives the
    short option forms. The installed packs' directories (``mechclaims.pack_plugins``) are added
    unless the arguments name paths of their own; a broken plug-in is one line and exit 4 here,
    before pytest starts. A child process, because the library never imports pytest (the plugin
    does)."""
    import os
    import subprocess

    from . import claims_dir
    from .pack_plugins import installed_packs, packs_help

    wants_help = any(a in ("-h", "--help") for a in pytest_args)
    argv = [str(claims_dir()), *pytest_args]
    if not wants_help and not _user_paths(pytest_args):
        argv += [str(p.directory) for p in installed_packs()]
    if not any(a == "--rootdir" or a.startswith("--rootdir=") for a in pytest_args):
        argv.append(f"--rootdir={os.getcwd()}")
    status = subprocess.call([sys.executable, "-m", "pytest", *argv])
    if wants_help:
        print(f"\nmechclaims check runs the {packs_help()}; `mechclaims packs` lists them with their papers.")
    return status


#: pytest's options that take the next argument as their value (beside the claim options), so
#: that value is not mistaken for a path to collect.
_PYTEST_VALUE_OPTIONS = frozenset({
    "-k", "-m", "-p", "-c", "-o", "-r", "-W", "--rootdir", "--basetemp", "--junitxml", "--junit-xml",
    "--junit-prefix", "--confcutdir", "--deselect", "--ignore", "--ignore-glob", "--maxfail", "--tb",
    "--durations", "--durations-min", "--import-mode", "--capture", "--override-ini", "--log-level",
    "--log-file", "--log-file-level", "--log-cli-level", "--log-format", "--html", "--css", "--inifile",
    "--config-file", "--pythonwarnings", "--timeout", "--benchmark-json", "--benchmark-save",
})


def _user_paths(pytest_args: list[str]) -> list[str]:
    """The arguments that name paths to collect (``my_claims/``, ``x.py::test_y``): positional
    arguments that exist, not the value of the option before them."""
    from pathlib import Path

    from .options import OPTIONS, prefixed

    takes_value = _PYTEST_VALUE_OPTIONS | {f for f, _, _ in OPTIONS} | {prefixed(f) for f, _, _ in OPTIONS}
    out, prev = [], ""
    for a in pytest_args:
        if not a.startswith("-") and prev not in takes_value and Path(a.split("::", 1)[0]).exists():
            out.append(a)
        prev = a
    return out


def _sweep(args) -> int:
    """``mechclaims sweep``: 0 the last checkpoint passes every selected gate claim, 1 it fails
    one (outcome failed, as pytest), 4 a setup error (one line, as pytest's usage error)."""
    try:
        return _run_sweep(args)
    except MechclaimsError as exc:
        print(f"mechclaims: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 4


def _run_sweep(args) -> int:
    from pathlib import Path

    from .cache import default_cache_dir
    from .config import build_config
    from .errors import OutputPathError
    from .sweep import (check_outputs, expand, load_claims, outcome_counts, run_sweep, select_claims, write_junit,
                        write_sweep_report)

    checkpoints = expand(args.checkpoints)
    specs = load_claims(args.claims_dir)  # None: the built-in claims, mechclaims.claims_dir()
    cli = {"model": checkpoints[0].source, "base": args.base, "probe": args.probe, "prompts": args.prompts,
           "positions": args.positions, "max_new_tokens": args.max_new_tokens, "bootstrap": args.bootstrap,
           "scorer": args.scorer, "ppl_text": args.ppl_text, "cache_dir": args.cache_dir,
           "patch_positions": args.patch_positions, "device": args.device, "dtype": args.dtype,
           "baseline": args.baseline, "strict": args.strict, "reading": args.reading,
           "report": str(Path(args.report).with_name("claims.html"))}
    config = build_config(cli, claims_config=args.claims_config, pyproject=Path.cwd() / "pyproject.toml")
    from .suite import apply_thresholds

    specs = apply_thresholds(specs, config.thresholds)
    select_claims(specs, args.select, args.keyword)  # a bad --select / -k is refused before any hashing
    report = Path(args.report)
    if report.suffix.lower() == ".json":
        raise OutputPathError(f"--report {args.report!r} would put the HTML report where sweep.json goes; "
                              "expected an .html path (the JSON is written beside it).")
    outputs = {"--report": [report, report.with_suffix(".json")]}
    if args.junitxml:
        outputs["--junitxml"] = [Path(args.junitxml)]
    inputs = {"--probe": config.probe, "--prompts": config.prompts, "--ppl-text": config.ppl_text,
              "--baseline": config.baseline, "--claims-config": args.claims_config, "--base": config.base,
              "--cache-dir": str(Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir())}
    for c in checkpoints:
        for part in c.source.split("::"):
            inputs[f"checkpoint {c.label} ({part})"] = part
    check_outputs(outputs, inputs)  # before any model work
    result = run_sweep(config, checkpoints, specs, select=args.select, keyword=args.keyword)
    html, js = write_sweep_report(result, report)
    for row in result.rows:
        print(f"{row.checkpoint.label:>24} (step {row.checkpoint.step}): {outcome_counts(row.result)}")
    failing = result.last_fails_gate()
    print(f"wrote {html} and {js}")
    if args.junitxml:
        print(f"wrote {write_junit(result, args.junitxml)}")
    if result.skipped:  # another architecture than the base: the report holds the others
        from .sweep import skipped_text

        print(f"mechclaims: error: left out of the sweep (not comparable with the base): {skipped_text(result)}",
              file=sys.stderr)
        return 4  # a setup error, as the sweep's others
    if failing:
        print(f"the last checkpoint fails the gate: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


def _diff(args) -> int:
    """``mechclaims diff A B``: exit 0 (no regression), 1 (a claim regressed), 4 (a report refused)."""
    from .diff import diff_documents, read_pair, render_markdown, render_text, write_html

    try:
        a, b = read_pair(args.a, args.b)
        d = diff_documents(a, b, args.a, args.b)
        path = write_html(d, args.html, (args.a, args.b)) if args.html else None
    except MechclaimsError as exc:
        print(f"mechclaims: error: {exc}", file=sys.stderr)
        return 4
    print(render_markdown(d) if args.markdown else render_text(d), end="")
    if path is not None:
        print(f"wrote {path}", file=sys.stderr if args.markdown else sys.stdout)
    return d.exit_status


if __name__ == "__main__":  # pragma: no cover - after every function main calls
    raise SystemExit(main())
