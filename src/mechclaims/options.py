"""The claim options: one table of (short form, destination, help) that the pytest plugin, its
short forms for ``claims/conftest.py`` and the docs all read. No pytest import: the functions
take pytest's ``Parser``."""

from __future__ import annotations

# (short form, dest, help). The entry point registers only the prefixed form of each
# (``--claims-model``, ...; ``prefixed``), so installing mechclaims never adds options another
# project's pytest run could collide with. The short forms (``--model``, ...) come from
# ``add_short_options``, which claims/conftest.py calls; both forms set ``mechclaims_<dest>``.
OPTIONS = (
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
    ("--ppl-text", "ppl_text", "text file for perplexity, the fluency claims (default: an organism's held-out text; "
                               "otherwise mechclaims' shipped English reference prose, data/fluency.txt)"),
    ("--patch-positions", "patch_positions", "where interventions act during generation: generated "
                                             "(the paper's: last prompt position + each new token) or all "
                                             "(the prompt too); perplexity always patches every position"),
    ("--baseline", "baseline", "a previous run's claims.json, or a model source run on the same base: a claim "
                               "fails when it regressed beyond its tolerance ([tool.mechclaims.regression])"),
    ("--reading", "reading", "how a check is read: point (the paper's: the point estimate), interval (the gate's: "
                             "pass/fail only when the whole 95%% interval is on one side, else inconclusive), "
                             "or auto (default: interval under -m gate, point otherwise)"),
)


def prefixed(flag: str) -> str:
    """``--model`` -> ``--claims-model``; ``--claims-config`` stays as it is."""
    return flag if flag.startswith("--claims-") else "--claims-" + flag[2:]


def add_short_options(parser) -> list[str]:
    """Register the short forms (``--model`` for ``--claims-model``, ...) on ``parser``.

    Call it from a conftest's ``pytest_addoption`` (claims/conftest.py does). A short form that
    is already taken (your conftest's ``--device``, another plugin's ``--report``) is skipped,
    not a crash: its prefixed form still works. Returns the short forms it skipped."""
    taken = _taken_option_names(parser)
    group = parser.getgroup("mechclaims", "mechclaims claim suite")
    skipped = []
    for flag, dest, _ in OPTIONS:
        if flag == prefixed(flag):
            continue  # no short form (--claims-config)
        if flag in taken:
            skipped.append(flag)
            continue
        try:
            group.addoption(flag, dest=f"mechclaims_{dest}", default=None, help=f"short form of {prefixed(flag)}")
        except ValueError:  # pytest's own check: the name is already in this group
            skipped.append(flag)
    return skipped


def _taken_option_names(parser) -> set[str]:
    """Option names already registered on pytest's ``Parser``. pytest checks for duplicates only
    within one group and argparse only once every plugin has added its options (a crash, too
    late to skip), so look at every group. Private attributes, read defensively."""
    names = set()
    for group in [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", ())]:
        for opt in getattr(group, "options", ()):
            names.update(opt.names())
    return names


def scorer_option_help() -> str:
    # The scorer registry's own words; scoring imports numpy only, not torch.
    from .scoring import scorer_help

    return "toxicity scorer for the behavioural claims: " + scorer_help().replace("%", "%%")
