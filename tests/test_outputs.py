"""Issue 18: an output never overwrites an input, two outputs never share a path, and an output
that cannot be written fails clearly (exit status 4), before any model work when it can be known.

Every case runs the real plugin or CLI on the GPT-2 organism (16 prompts, claims C0 and C3), and
asserts the exit status, a phrase of the message, that no model work happened (the result cache
has no ``results/``), and that the input's bytes are unchanged. Inputs are private copies: a
regression must never damage the committed organism (or this machine's /dev/null).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mechclaims.cli import main
from mechclaims.errors import OutputPathError
from mechclaims.organism import layout

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
ORG = layout("gpt2")
pytest_plugins = ["pytester"]
USAGE = pytest.ExitCode.USAGE_ERROR  # 4


@pytest.fixture
def files(tmp_path_factory):
    """Private copies of everything a run reads: prompts (16), probe, a DPO weights file and
    model directory, a claims config, labelled probe data. One set per test: on the code before
    issue 18 the first case overwrote its probe, which would have broken every later case."""
    d = tmp_path_factory.mktemp("inputs")
    lines = ORG.prompts.read_text().splitlines()[:16]
    (d / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(ORG.probe, d / "probe.safetensors")
    shutil.copy(ORG.dpo / "model.safetensors", d / "dpo.safetensors")
    shutil.copytree(ORG.dpo, d / "dpo")
    (d / "claims.toml").write_text("[tool.mechclaims]\nbootstrap = 20\n")
    data = ORG.probe_eval.read_text().splitlines()[:40]
    (d / "labelled.jsonl").write_text("\n".join(data) + "\n")
    return d


def _bytes(*paths) -> dict:
    return {str(p): Path(p).read_bytes() for p in paths}


def _run(pytester, files, *extra, report=None):
    """The claim suite on the organism; returns (result, cache dir, report path)."""
    cache = pytester.path / "cache"
    report = report or pytester.path / "out" / "claims.html"
    args = [CLAIMS, "-k", "C0 or C3", "--prompts", str(files / "prompts.jsonl"), "--probe",
            str(files / "probe.safetensors"), "--cache-dir", str(cache), "--max-new-tokens", "4",
            "--bootstrap", "20", "-p", "no:randomly", *extra]
    if report != "default":
        args += ["--report", str(report)]
    return pytester.runpytest_inprocess(*args), cache, report


def _no_model_work(cache: Path) -> bool:
    """Hashing the inputs may memoise file hashes in the cache; any model work writes results/."""
    return not (cache / "results").exists()


def _refused(res, cache, *phrases):
    text = res.stdout.str() + res.stderr.str()
    assert res.ret == USAGE, text[-3000:]
    for p in phrases:
        assert p in text, (p, text[-3000:])
    assert _no_model_work(cache)
    return text


# --- --junitxml and pytest-html against every input and output -----------------------------------


@pytest.mark.parametrize("target, option", [
    ("probe.safetensors", "--probe"),
    ("prompts.jsonl", "--prompts"),
    ("claims.toml", "--claims-config"),
])
def test_junitxml_onto_an_input_is_refused(pytester, files, target, option):
    before = _bytes(files / target)
    extra = ("--claims-config", str(files / "claims.toml")) if option == "--claims-config" else ()
    res, cache, _ = _run(pytester, files, "--junitxml", str(files / target), *extra)
    _refused(res, cache, "--junitxml", option, "would overwrite")
    assert _bytes(files / target) == before


def test_junitxml_onto_a_weights_file_is_refused(pytester, files):
    weights = files / "dpo.safetensors"
    before = _bytes(weights)
    res, cache, _ = _run(pytester, files, "--base", str(ORG.base), "--model", str(weights),
                         "--junitxml", str(weights))
    _refused(res, cache, "--junitxml", "--model", "would overwrite")
    assert _bytes(weights) == before


def test_junitxml_inside_a_model_directory_is_refused(pytester, files):
    before = _bytes(*(files / "dpo").iterdir())
    res, cache, _ = _run(pytester, files, "--base", str(ORG.base), "--model", str(files / "dpo"),
                         "--junitxml", str(files / "dpo" / "config.json"))
    _refused(res, cache, "--junitxml", "--model", "inside")
    assert _bytes(*(files / "dpo").iterdir()) == before


def test_junitxml_onto_the_baseline_is_refused(pytester, files):
    release = pytester.path / "release" / "claims.html"
    res, _, _ = _run(pytester, files, report=release)
    assert res.ret in (0, 1), res.stdout.str()[-2000:]
    baseline = release.with_suffix(".json")
    before = _bytes(baseline)
    shutil.rmtree(pytester.path / "cache")
    res, cache, _ = _run(pytester, files, "--baseline", str(baseline), "--junitxml", str(baseline))
    _refused(res, cache, "--junitxml", "--baseline", "would overwrite")
    assert _bytes(baseline) == before


@pytest.mark.parametrize("which", ["html", "json"])
def test_junitxml_sharing_a_path_with_the_report_is_refused(pytester, files, which):
    report = pytester.path / "out" / "claims.html"
    target = report if which == "html" else report.with_suffix(".json")
    res, cache, _ = _run(pytester, files, "--junitxml", str(target), report=report)
    _refused(res, cache, "--junitxml", "--report", "same file")
    assert not target.exists()


def test_pytest_html_onto_the_prompts_is_refused(pytester, files):
    pytest.importorskip("pytest_html")
    before = _bytes(files / "prompts.jsonl")
    res, cache, _ = _run(pytester, files, "--html", str(files / "prompts.jsonl"))
    _refused(res, cache, "--html", "--prompts", "would overwrite")
    assert _bytes(files / "prompts.jsonl") == before


def test_junitxml_to_the_null_device_is_allowed(pytester, files):
    """pytest opens the JUnit file in place: /dev/null discards it (a common idiom), and stays a device."""
    res, _, report = _run(pytester, files, "--junitxml", os.devnull)
    assert res.ret in (0, 1), res.stdout.str()[-2000:]
    assert report.is_file() and stat.S_ISCHR(os.stat(os.devnull).st_mode)


# --- what is at the report path, and whether it can be written ----------------------------------


def _device(tmp_path: Path) -> Path:
    """A private non-regular file: a character device like /dev/null (root), else a fifo."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        os.mkfifo(node)
    return node


def test_report_onto_a_device_is_refused(pytester, files, tmp_path):
    node = _device(tmp_path)
    mode = os.stat(node).st_mode
    res, cache, _ = _run(pytester, files, report=node)
    _refused(res, cache, "--report", "not a regular file")
    assert os.stat(node).st_mode == mode  # still the device (or fifo), not a regular file


def test_report_onto_dev_null_is_refused_by_the_early_check(files):
    """/dev/null itself is only checked (nothing is written): refused, and still a device."""
    from dataclasses import replace

    from mechclaims.config import build_config
    from mechclaims.runspec import check_outputs, resolve_run

    spec = resolve_run(build_config({"prompts": str(files / "prompts.jsonl"), "probe": str(files / "probe.safetensors"),
                                     "report": str(files / "ok" / "claims.html")}))
    with pytest.raises(OutputPathError, match="character device"):
        check_outputs(replace(spec, config=replace(spec.config, report=os.devnull)))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_atomic_write_refuses_a_non_regular_target(tmp_path):
    """Defence in depth: the write itself refuses what the early check would have."""
    from mechclaims.cache import atomic_write_text

    node = _device(tmp_path)
    mode = os.stat(node).st_mode
    with pytest.raises(OutputPathError, match="not a regular file"):
        atomic_write_text(node, "x")
    with pytest.raises(OutputPathError, match="is a directory"):
        atomic_write_text(tmp_path, "x")
    assert os.stat(node).st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary file left


def test_atomic_write_follows_a_symlink_to_a_regular_file(tmp_path):
    """Documented choice: an output that is a symlink is written through, to its target."""
    from mechclaims.cache import atomic_write_text

    target = tmp_path / "real.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_symlink_to_an_input_is_refused(pytester, files):
    link = pytester.path / "junit.xml"
    link.symlink_to(files / "prompts.jsonl")
    before = _bytes(files / "prompts.jsonl")
    res, cache, _ = _run(pytester, files, "--junitxml", str(link))
    _refused(res, cache, "--junitxml", "--prompts")
    assert _bytes(files / "prompts.jsonl") == before


def test_report_in_proc_is_refused_before_model_work(pytester, files):
    res, cache, _ = _run(pytester, files, report=Path("/proc/claims.html"))
    _refused(res, cache, "--report", "/proc", "cannot create a file")


def _readonly_dir(tmp_path: Path):
    """A directory nobody can write into: a read-only tmpfs (root ignores permission bits)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        return d, lambda: d.chmod(0o755)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    return d, lambda: subprocess.run(["umount", str(d)], check=True)


def test_the_default_report_in_an_unwritable_working_directory(pytester, files, tmp_path, monkeypatch):
    """The default --report is reports/claims.html in the working directory (from / that is
    /reports/claims.html): when that cannot be written, the message says where and why."""
    ro, undo = _readonly_dir(tmp_path)
    try:
        monkeypatch.chdir(ro)
        res, cache, _ = _run(pytester, files, report="default")
        _refused(res, cache, f"{ro}/reports/claims.html", "working directory", "--report")
    finally:
        monkeypatch.undo()
        undo()


# --- a disk that fills at report time -----------------------------------------------------------


def _tiny_tmpfs(tmp_path: Path):
    d = tmp_path / "full"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    return d, lambda: subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("how", ["tmpfs", "fsync"])
def test_a_full_disk_at_report_time_is_exit_4_and_leaves_no_partial_file(pytester, files, tmp_path,
                                                                         monkeypatch, how):
    if how == "tmpfs":
        out, undo = _tiny_tmpfs(tmp_path)  # 8 KiB: the early check's empty file fits, the report does not
    else:
        out, undo = tmp_path / "full", (lambda: None)
        out.mkdir()
        import mechclaims.cache as cache_mod

        real_fsync = os.fsync

        def full(fd):  # the bytes were written; the disk refuses them on the flush
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(cache_mod.os, "fsync", full)
    try:
        report = out / "claims.html"
        (out / "claims.html").write_text("<title>mechclaims: an earlier run</title>") if how == "fsync" else None
        res, cache, _ = _run(pytester, files, report=report)
        text = res.stdout.str() + res.stderr.str()
        assert res.ret == USAGE, text[-3000:]
        assert "INTERNALERROR" not in text
        assert "No space left on device" in text and str(out) in text and "--report" in text
        assert (cache / "results").exists()  # the model work was done; only the write failed
        assert sorted(p.name for p in out.iterdir()) == []  # no partial file, no stale report
    finally:
        monkeypatch.undo()
        undo()


# --- the command line ---------------------------------------------------------------------------


def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def test_neurons_out_onto_the_probe_is_refused(files, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import load_file

    probe = tmp_path / "probe.npy"
    np.save(probe, load_file(files / "probe.safetensors")["direction"])
    before = _bytes(probe)
    rc, err = _cli(capsys, "neurons", "--base", str(ORG.base), "--model", str(files / "dpo"), "--probe", str(probe),
                   "--prompts", str(files / "prompts.jsonl"), "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(probe))
    assert rc == 4 and "--out" in err and "--probe" in err and err.count("\n") == 1, err
    assert _bytes(probe) == before and _no_model_work(tmp_path / "cache")


def test_neurons_sidecar_inside_the_model_directory_is_refused(files, tmp_path, capsys):
    """--out DIR/config.csv would put its JSON sidecar onto the model's config.json."""
    before = _bytes(*(files / "dpo").iterdir())
    rc, err = _cli(capsys, "neurons", "--base", str(ORG.base), "--model", str(files / "dpo"),
                   "--probe", str(files / "probe.safetensors"), "--prompts", str(files / "prompts.jsonl"),
                   "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(files / "dpo" / "config.csv"))
    assert rc == 4 and "--model" in err and "inside" in err and err.count("\n") == 1, err
    assert _bytes(*(files / "dpo").iterdir()) == before and _no_model_work(tmp_path / "cache")


def test_sweep_report_onto_a_checkpoint_is_refused(files, tmp_path, capsys):
    ckpt = files / "dpo.safetensors"
    before = _bytes(ckpt)
    rc, err = _cli(capsys, "sweep", str(ckpt), "--base", str(ORG.base), "--probe", str(files / "probe.safetensors"),
                   "--prompts", str(files / "prompts.jsonl"), "--select", "gate", "--max-new-tokens", "4",
                   "--bootstrap", "20", "--cache-dir", str(tmp_path / "cache"), "--report", str(ckpt))
    assert rc == 4 and "--report" in err and "would overwrite" in err and err.count("\n") == 1, err
    assert _bytes(ckpt) == before and _no_model_work(tmp_path / "cache")


def test_sweep_report_in_proc_is_refused(files, tmp_path, capsys):
    rc, err = _cli(capsys, "sweep", str(files / "dpo"), "--base", str(ORG.base),
                   "--probe", str(files / "probe.safetensors"), "--prompts", str(files / "prompts.jsonl"),
                   "--cache-dir", str(tmp_path / "cache"), "--report", "/proc/sweep.html")
    assert rc == 4 and "cannot create a file" in err and _no_model_work(tmp_path / "cache"), err


def test_probe_train_out_onto_the_model_weights_is_refused(files, capsys):
    weights = files / "dpo.safetensors"
    before = _bytes(weights)
    rc, err = _cli(capsys, "probe", "train", "--model", f"{ORG.base}::{weights}",
                   "--data", str(files / "labelled.jsonl"), "--out", str(weights))
    assert rc == 4 and "--out" in err and "--model" in err and err.count("\n") == 1, err
    assert _bytes(weights) == before


def test_probe_train_out_onto_the_data_is_refused(files, capsys):
    data = files / "labelled.safetensors"
    data.write_bytes(b"{}")
    rc, err = _cli(capsys, "probe", "train", "--model", str(ORG.base), "--data", str(data), "--out", str(data))
    assert rc == 4 and "--data" in err and data.read_bytes() == b"{}", err


# --- the rules themselves (no run) ---------------------------------------------------------------


def test_a_hard_link_to_an_input_is_that_input(tmp_path):
    from mechclaims.outputs import Input, Output, check

    (tmp_path / "prompts.jsonl").write_text("x\n")
    os.link(tmp_path / "prompts.jsonl", tmp_path / "junit.xml")
    with pytest.raises(OutputPathError, match="hard link") as ei:
        check([Output("--junitxml", tmp_path / "junit.xml", in_place=True)],
              [Input("--prompts", tmp_path / "prompts.jsonl")])
    assert ei.value.options == ("--junitxml",)  # the plugin silences pytest's writer of a refused path


def test_only_the_caches_own_files_are_protected(tmp_path):
    from mechclaims.outputs import CACHE, Input, Output, check

    cache = [Input("--cache-dir", tmp_path, CACHE)]
    check([Output("--report", tmp_path / "claims.html")], cache)  # beside the cache's entries: fine
    for p in (tmp_path / "file-hashes.json", tmp_path / "results" / "ab" / "x.html"):
        with pytest.raises(OutputPathError, match="result cache"):
            check([Output("--report", p)], cache)


def test_the_null_device_is_refused_for_a_replaced_output_and_allowed_in_place():
    from mechclaims.outputs import Output, check

    check([Output("--junitxml", os.devnull, in_place=True), Output("--html", os.devnull, in_place=True)], [])
    with pytest.raises(OutputPathError, match="character device"):
        check([Output("--report", os.devnull)], [])
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_write_error_names_the_option_the_path_and_the_reason(tmp_path):
    from mechclaims.outputs import writing

    with pytest.raises(OutputPathError, match=r"could not write --out .*x\.csv: No space left on device \(ENOSPC\)"):
        with writing("--out", tmp_path / "x.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
