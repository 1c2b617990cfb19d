"""One door (issue 19): ``pytest claims/``, ``mechclaims neurons``, ``mechclaims sweep`` and the TRL
callback resolve the same inputs into the same ``RunSpec`` (organism defaults, the base's inference, the probe, the
prompts, the scorer, the fluency text), each through ``runspec.resolve_run``.

Each entry point is stopped right after it resolved its inputs (the recorded ``resolve_run``
raises), so no model is loaded: the test compares what every door resolved, not its numbers.
"""

import pytest

from mechclaims import runspec
from mechclaims.cli import main
from tests.test_gate import CLAIMS

pytest_plugins = ["pytester"]


class _Resolved(Exception):
    """Raised after the RunSpec was recorded: the entry point goes no further."""


@pytest.fixture
def recorded(monkeypatch):
    specs = []
    real = runspec.resolve_run

    def record(cfg, **kw):
        spec = real(cfg, **kw)
        specs.append(spec)
        raise _Resolved()

    monkeypatch.setattr(runspec, "resolve_run", record)
    return specs


def _key(spec) -> dict:
    return {"model": spec.model.sha256, "base": spec.base.sha256, "base_from": spec.base_from,
            "probe": spec.probe.sha256, "prompts": spec.prompts, "scorer": spec.scorer,
            "ppl_text": spec.ppl_text, "organism": spec.organism}


def test_every_entry_point_resolves_the_same_run(recorded, pytester, tmp_path):
    # pytest claims/ (the plugin): the organism's defaults
    pytester.runpytest_inprocess(CLAIMS, "-k", "C0", "--report", str(tmp_path / "p" / "claims.html"),
                                 "--cache-dir", str(tmp_path / "cache"), "-p", "no:randomly")
    # mechclaims neurons, no --base, --probe or --prompts: the same defaults
    with pytest.raises(_Resolved):
        main(["neurons", "--model", "organism:gpt2", "--cache-dir", str(tmp_path / "cache"),
              "--out", str(tmp_path / "n.csv")])
    # mechclaims sweep over the one model
    with pytest.raises(_Resolved):
        main(["sweep", "organism:gpt2", "--cache-dir", str(tmp_path / "cache"),
              "--report", str(tmp_path / "s" / "sweep.html")])
    # the TRL callback at a save of the same model (its prompts, all of them, copied to a scratch file)
    from pathlib import Path
    from types import SimpleNamespace

    from mechclaims.integrations.trl import MechclaimsCallback
    from mechclaims.organism import organism_dir

    d = organism_dir("gpt2")
    cb = MechclaimsCallback(SimpleNamespace(log=lambda logs: None), base="organism:gpt2-base",
                            probe=str(d / "probe.safetensors"), prompts=str(d / "prompts.jsonl"), num_prompts=None,
                            cache_dir=str(tmp_path / "cache"))
    with pytest.raises(_Resolved):
        cb._run(Path("organism:gpt2"), tmp_path / "trl", SimpleNamespace(global_step=1), SimpleNamespace())
    assert len(recorded) == 4, [s.config.model for s in recorded]
    plugin, neurons, sweep, trl = (_key(s) for s in recorded)
    assert plugin["base_from"] == "the organism's base" and plugin["scorer"].startswith("lexicon:")
    assert neurons == plugin
    assert sweep == plugin
    # the callback names its base (a trainer knows its reference model): everything else is the same
    assert trl.pop("base_from") != plugin.pop("base_from")
    assert trl == plugin
