"""Options -> one frozen ``RunSpec``: every input of a claim run resolved once, before any model.

``resolve_run(config)`` fills the organism defaults, resolves the model and base sources into
hashed ``Source`` records, reads and hashes the prompts, loads the probe (a few KB) and checks
its width against the model's config file, resolves the scorer by name, and checks every path
the run will read or write. Everything cheap that can be wrong is found here, before a single
weight is loaded; every later stage (analysis, behaviour, report) takes the ``RunSpec`` and
never parses an option string again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .cache import default_cache_dir
from .config import ClaimsConfig
from .devices import DEVICE_MAP_KINDS
from .errors import ConfigError, ModelSourceError, OutputPathError
from .provenance import display_path
from .sources import ORGANISM_PREFIX, Source, resolve_source


@dataclass(frozen=True)
class RunSpec:
    """A claim run's inputs, resolved. ``config`` keeps the options as given (for the report)."""

    config: ClaimsConfig
    model: Source
    base: Source
    probe: object              # mechclaims.probe.Probe
    probe_path: str
    prompts: tuple[str, ...]
    prompts_path: str
    scorer: str | None         # a registered scorer spec, "auto" resolved; None: no usable scorer
    ppl_text: str | None       # path of the perplexity text, or None
    cache_dir: Path | None
    organism: str | None = None  # the organism's arch when the defaults came from one
    base_from: str = "--base"    # where the base came from (given, organism, adapter config, ...)
    baseline_report: dict | None = None   # --baseline claims.json, checked compatible
    baseline_model: Source | None = None  # --baseline as a model source, on this run's base

    @property
    def settings(self):
        from .stats import StatsSettings

        from .devices import DEFAULT_CPU_BATCH

        c = self.config
        return StatsSettings(positions=c.positions, max_new_tokens=c.max_new_tokens,
                             max_prompt_tokens=c.max_prompt_tokens, batch_size=c.batch_size or DEFAULT_CPU_BATCH)

    @property
    def auto_batch(self) -> bool:
        """No batch size given and a CUDA device: the batch is chosen from free memory."""
        return self.config.batch_size is None and str(self.config.device).startswith("cuda")

    @property
    def json_report(self) -> Path:
        return self.config.json_report

    def inputs(self) -> dict:
        """What the run reads, as shown in reports (paths relative to the working directory), with
        the content hashes a baseline must share (``baseline.MUST_MATCH``)."""
        return {"model": self.model.describe(), "base": {**self.base.describe(), "from": self.base_from},
                "probe": display_path(self.probe_path), "prompts": display_path(self.prompts_path),
                "scorer": self.scorer, "ppl_text": display_path(self.ppl_text) if self.ppl_text else None,
                "baseline": self.baseline_label, **self.content_keys()}

    def content_keys(self) -> dict:
        """The scorer's and the perplexity text's content hashes and the perplexity settings."""
        from .perplexity import SETTINGS as PPL_SETTINGS

        return {"scorer_sha256": scorer_sha256(self.scorer),
                "ppl_text_sha256": _file_sha256(self.ppl_text) if self.ppl_text else None,
                "perplexity": dict(PPL_SETTINGS) if self.ppl_text else None}

    @property
    def baseline_label(self) -> str | None:
        if self.baseline_model is not None:
            return self.baseline_model.label
        return display_path(self.config.baseline) if self.baseline_report is not None else None


def organism_defaults(cfg: ClaimsConfig) -> tuple[dict, str | None]:
    """The base, probe, prompts, scorer and perplexity text an organism model brings."""
    if not cfg.model.startswith(ORGANISM_PREFIX):
        return {}, None
    from . import organism

    name = cfg.model[len(ORGANISM_PREFIX):]
    arch, _ = organism.split_name(name)
    files = organism.layout(arch).defaults()
    return {"base": f"{ORGANISM_PREFIX}{organism.base_of(name)}", "probe": files["probe"],
            "prompts": files["prompts"], "scorer": f"lexicon:{files['lexicon']}",
            "ppl_text": files["heldout"]}, arch


def resolve_run(cfg: ClaimsConfig, *, report: bool = True, cache: bool = True) -> RunSpec:
    """Resolve and check every input of a run; raises a MechclaimsError (a setup error) naming
    the option at fault. Loads no model weights. ``report=False``: the caller writes no claim
    report (``mechclaims neurons``) and checks its own outputs; ``cache=False``: nothing is read
    from or written to the cache directory, file hashes included (``--no-cache``)."""
    from .probe import load_probe
    from .prompts import read_prompts
    from .scoring import resolve_scorer_spec

    defaults, arch = organism_defaults(cfg)
    base_s, base_from = cfg.base, "--base (or [tool.mechclaims] base)"
    if not base_s and defaults:
        base_s, base_from = defaults["base"], "the organism's base"
    probe_s = cfg.probe or defaults.get("probe", "")
    prompts_s = cfg.prompts or defaults.get("prompts", "")
    missing = [opt for opt, val in (("--probe", probe_s), ("--prompts", prompts_s)) if not val]
    if missing:
        raise ConfigError(
            f"--model {cfg.model!r} is not an organism, so {', '.join(missing)} must be given: a "
            "probe direction for its d_model (no probe yet? `mechclaims probe train`), and the "
            "prompts to generate from (e.g. RealToxicityPrompts' challenge subset as .jsonl)."
        )
    if not base_s:
        from .sources import infer_base

        base_s, base_from = infer_base(cfg.model)
    check_device(cfg.device)
    cache_dir = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()) if cache else None
    if cache_dir is not None:
        _check_writable_dir(cache_dir, "--cache-dir (or MECHCLAIMS_CACHE_DIR)")
    from .inspect_source import check_not_same, inspect_pair

    inspect_pair(cfg.model, base_s, base_from)  # config, tokenizer, headers, pickles: before hashing or loading
    base = resolve_source(base_s, memo_dir=cache_dir)
    model = resolve_source(cfg.model, base=base, memo_dir=cache_dir)
    check_not_same(model, base, base_from)
    dims = model_dims(base)
    probe = load_probe(probe_s, d_model=dims.get("d_model"))
    prompts = tuple(read_prompts(prompts_s))
    _check_context(cfg, dims)
    scorer = resolve_scorer_spec(cfg.scorer, organism_default=defaults.get("scorer"), probe=probe)
    ppl_text = cfg.ppl_text or defaults.get("ppl_text") or _default_ppl_text(base)
    if ppl_text and not Path(ppl_text).expanduser().is_file():
        raise ConfigError(f"--ppl-text {ppl_text!r} is not a file (looked at {Path(ppl_text).resolve()}); "
                          "expected a UTF-8 text file to measure perplexity on (e.g. WikiText-2 test).")
    content = RunSpec(cfg, None, None, None, "", (), "", scorer, ppl_text, None).content_keys()
    baseline_doc, baseline_model = _baseline(cfg, base, probe, prompts, cache_dir, content)
    check_device_map(cfg.device_map, base, model, *([baseline_model] if baseline_model else []))
    spec = RunSpec(cfg, model, base, probe, str(probe_s), prompts, str(prompts_s), scorer, ppl_text,
                   cache_dir, arch, base_from, baseline_doc, baseline_model)
    if report:
        check_outputs(spec)
    return spec


def _default_ppl_text(base: Source) -> str:
    """Fluency is a gate claim (C2), so it always has a text: an organism base's held-out text (its
    own tokenizer's language), else mechclaims' shipped English reference prose."""
    if base.kind == "organism":
        from . import organism

        arch, _ = organism.split_name(base.location)
        return str(organism.layout(arch).defaults()["heldout"])
    from .perplexity import default_ppl_text

    return default_ppl_text()


def scorer_sha256(scorer: str | None) -> str | None:
    """The scorer's content hash (a lexicon's file, a registered scorer's code), so a baseline
    scored otherwise is refused and cached scores are keyed on what scored them."""
    if scorer is None:
        return None
    from . import scoring

    digest = getattr(scoring, "scorer_digest", None)
    if digest is not None:
        return digest(scorer)
    import hashlib

    return hashlib.sha256(scorer.encode()).hexdigest()


def _file_sha256(path: str) -> str:
    from .cache import sha256_file

    return sha256_file(Path(path).expanduser())


def _baseline(cfg: ClaimsConfig, base: Source, probe, prompts, cache_dir, content_keys: dict):
    """(report, None) for a claims.json baseline, checked against this run's settings;
    (None, Source) for a model baseline, run on this run's base; (None, None) without one."""
    if not cfg.baseline:
        return None, None
    from . import baseline as bl

    if bl.is_report(cfg.baseline):
        from .prompts import prompts_sha256

        doc = bl.read_report(cfg.baseline)
        mine = {"provenance": {"prompts": {"sha256": prompts_sha256(list(prompts))}, "probe": {"sha256": probe.sha256},
                               "base": {"sha256": base.sha256},
                               "settings": {"positions": cfg.positions, "max_new_tokens": cfg.max_new_tokens,
                                            "max_prompt_tokens": cfg.max_prompt_tokens}},
                "inputs": content_keys}
        bl.check_compatible(doc, mine, display_path(cfg.baseline))
        return doc, None
    return None, resolve_source(cfg.baseline, base=base, memo_dir=cache_dir)


def check_device(device: str) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` (present on this machine), or ``mps`` where available."""
    import re

    import torch

    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", str(device))
    if not m:
        raise ConfigError(f"--device {device!r} is not a device; expected cpu, cuda, cuda:N or mps.")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {device!r}: this machine has no CUDA device (torch {torch.__version__}, "
                              f"CUDA build: {torch.version.cuda is not None}); use --device cpu, or install a "
                              "CUDA build of torch on a machine with a GPU.")
        if index is not None and int(index) >= n:
            raise ConfigError(f"--device {device!r}: only {n} CUDA device(s) here (cuda:0 .. cuda:{n - 1}).")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device!r}: MPS is not available on this machine; use --device cpu.")


def check_device_map(device_map: str, *sources: Source) -> None:
    """``--device-map`` needs Accelerate, and applies to sources transformers loads itself (HF
    directories and hub ids): the others are assembled on one device first."""
    if not device_map:
        return
    others = [s for s in sources if s.kind not in DEVICE_MAP_KINDS]
    if others:
        raise ConfigError(f"--device-map {device_map!r} applies to HF directories and hub ids; "
                          f"{', '.join(f'{s.label} ({s.kind})' for s in others)} load(s) on one device: "
                          "drop --device-map, or save the merged model with save_pretrained and use that directory.")
    from .devices import MIXED_MAP_HELP, mixes_gpu_and_offload, parse_device_map

    if mixes_gpu_and_offload(parse_device_map(device_map)):
        raise ConfigError(f"--device-map {device_map!r} puts modules on a GPU and on cpu/disk. {MIXED_MAP_HELP}")
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--device-map {device_map!r} needs Accelerate: pip install accelerate.") from exc
    from .devices import check_map_devices, check_map_modules

    check_map_devices(parse_device_map(device_map))  # every GPU it names exists on this machine
    for s in dict.fromkeys(sources):  # every module it names exists; every weight is placed
        check_map_modules(parse_device_map(device_map), _config_json(s), s.label)


def model_dims(source: Source) -> dict:
    """d_model, vocabulary size and context length from the model's config file, without weights."""
    cfg = _config_json(source)
    if cfg is None:
        return {}
    d_model = cfg.get("hidden_size", cfg.get("n_embd", cfg.get("d_model")))
    ctx = cfg.get("max_position_embeddings", cfg.get("n_positions", cfg.get("n_ctx")))
    return {k: int(v) for k, v in (("d_model", d_model), ("context", ctx), ("vocab", cfg.get("vocab_size")))
            if isinstance(v, int)}


def _config_json(source: Source) -> dict | None:
    if source.kind in ("weights", "adapter"):
        return _config_json(source.base)
    if source.kind == "organism":
        from . import organism

        arch, variant = organism.split_name(source.location)
        path = organism.layout(arch).weights_dir(variant) / "config.json"
    elif source.kind == "dir":
        path = Path(source.location) / "config.json"
    else:
        from .sources import hub_snapshot_dir

        snap = hub_snapshot_dir(source.location)
        path = snap / "config.json" if snap else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not a readable JSON model config ({exc}); is the checkpoint "
                               "complete?") from exc
    return data if isinstance(data, dict) else None


def _check_context(cfg: ClaimsConfig, dims: dict) -> None:
    ctx = dims.get("context")
    need = cfg.max_prompt_tokens + cfg.max_new_tokens
    if ctx and need > ctx:
        raise ConfigError(
            f"--max-new-tokens {cfg.max_new_tokens} plus max_prompt_tokens {cfg.max_prompt_tokens} is "
            f"{need} positions, beyond the model's context of {ctx}; lower --max-new-tokens to at most "
            f"{ctx - cfg.max_prompt_tokens}.")


def check_outputs(spec: RunSpec, outputs=(), inputs=()) -> None:
    """No output may overwrite an input or another output, and every output must be writable
    (``mechclaims.outputs``: the rule, symlinks, devices). ``outputs`` and ``inputs`` add what
    the RunSpec does not know: the plugin's ``--junitxml`` and ``--html``, the claims config,
    the collected test files."""
    from .outputs import CACHE, Input, Output, check, inputs as files_read, source_inputs

    html = Path(spec.config.report).expanduser().resolve()
    js = spec.json_report.expanduser().resolve()
    if html.suffix.lower() == ".json" or html == js:
        raise OutputPathError(
            f"--report {spec.config.report!r} would put the HTML report where claims.json goes; "
            "expected an .html path (the JSON is written beside it with the suffix .json).")
    default = ClaimsConfig().report
    note = (f" (the default --report {default} is relative to the working directory {Path.cwd()}: run from "
            "another directory or pass --report PATH)" if html == (Path.cwd() / default).resolve() else "")
    c = spec.config
    scorer_file = (spec.scorer or "").partition(":")[2]
    read = files_read((("--probe", spec.probe_path), ("--prompts", spec.prompts_path), ("--ppl-text", spec.ppl_text),
                       ("--baseline", c.baseline if spec.baseline_report is not None else None),
                       ("--scorer", scorer_file if scorer_file and Path(scorer_file).expanduser().exists() else None)))
    read += source_inputs("--model", spec.model) + source_inputs("--base", spec.base)
    if spec.baseline_model is not None:
        read += source_inputs("--baseline", spec.baseline_model)
    read.append(Input("--cache-dir", spec.cache_dir, CACHE))
    check([Output("--report", html, note=note), Output("the JSON beside --report", js, note=note), *outputs],
          [*read, *inputs])


def _check_writable_dir(d: Path, option: str) -> None:
    """Files can be created in ``d`` (or its nearest existing ancestor): a temporary file is
    created and removed there, since ``os.access`` says yes to root even for /proc."""
    from .outputs import check_writable_dir

    check_writable_dir(d, option)


__all__ = ["RunSpec", "resolve_run", "model_dims", "check_outputs", "organism_defaults"]
