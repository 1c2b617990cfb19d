"""The one definition of every named choice: position modes, dtypes, groups, intervention sets.

Ground floor: imports nothing from the project. Every other module, the claims and the report
take their names from here, so a choice is spelled once.

Spelling, decided once: Definition-A group names use ASCII signs (``TP-``, ``AN+``: they are
keys in JSON and CSV that users grep), Definition-B group names use the paper's arrows
(``TP↓``, ``AN↑``), and intervention-set names are built from those by the functions below.
"""

from __future__ import annotations

# --- statistics -------------------------------------------------------------------------------
#: ``own``: each model on its own greedy continuation (the paper's); ``shared``: both models on
#: the DPO model's continuation (Lee et al.), read in the same cached steps.
POSITION_MODES = ("own", "shared")
POSITIONS_READ = "last prompt position + generated positions 1..T-1 (T per prompt)"
#: How many of the first positions read count as "early" for the depth claims (Qi et al.: the
#: first few tokens; Q1, Q4, S2): the last prompt position and generated tokens 1..4.
EARLY_POSITIONS = 5
#: How many tokens of the other model's continuation are prefilled (Q2, Q3; Qi et al.'s attack).
PREFILL_KS = (1, 3, 5, 10)

#: Model dtypes. Statistics are accumulated in float64 whatever the model's dtype.
DTYPES = ("float32", "bfloat16", "float16", "float64")

# --- TransformerLens hook names ---------------------------------------------------------------
MLP_POST_HOOK = "blocks.{l}.mlp.hook_post"
MLP_OUT_HOOK = "blocks.{l}.mlp.out.hook_out"
RESID_POST_HOOK = "blocks.{l}.hook_resid_post"
#: Where the probe reads (paper A3): the final residual stream after the last LayerNorm.
LN_FINAL_HOOK = "ln_final.hook_normalized"

# --- interventions --------------------------------------------------------------------------
#: Where interventions act during generation, as a user says it: ``generated`` (the paper's:
#: the last prompt position, then each new token) or ``all`` (the prompt too).
PATCH_POSITIONS = ("generated", "all")
#: The same choice in the hooks' terms: which positions of each cached forward are touched.
HOOK_POSITIONS = ("last", "all")
HOOK_POSITION_OF = {"generated": "last", "all": "all"}

# --- the four sign cells and the two group definitions (paper §4, A6) ------------------------
CELLS = ("TP", "TN", "AP", "AN")       # codes 0..3: toxic/anti-toxic (cos sign) x positive/negative act
GROUPS_A = ("TP-", "TN+", "AP+", "AN-", "TP+", "TN-", "AP-", "AN+")  # the first four reduce
GROUPS_B = ("TP↓", "TN↓", "AP↓", "AN↓", "TP↑", "TN↑", "AP↑", "AN↑")  # the first four reduce
REDUCING_B = GROUPS_B[:4]
#: The cumulative patching order of C17 (TP↓, then + AN↓, + TN↓, + AP↓).
CUMULATIVE = (("TP↓",), ("TP↓", "AN↓"), ("TP↓", "AN↓", "TN↓"), ("TP↓", "AN↓", "TN↓", "AP↓"))

# --- intervention-set names ------------------------------------------------------------------
SET_BASE = "base"
SET_DPO = "dpo"
SET_EDIT = "edit"
SET_PATCH_ALL = "patch:all↓"
SET_PATCH_TP_MINUS = "patch:TP-"
TOP_K_PATCH = 256
ABLATE_KS = (100, 200)


def set_patch(groups: tuple[str, ...] | str) -> str:
    """``patch:TP↓``, ``patch:TP↓+AN↓`` ...; all four reducing groups are ``patch:all↓``."""
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    return SET_PATCH_ALL if groups == CUMULATIVE[-1] else "patch:" + "+".join(groups)


def set_patch_top(k: int) -> str:
    return f"patch:top{k}"


def set_ablate_top(k: int) -> str:
    return f"ablate:top{k}"


#: The cumulative steps in the order C17 and the report's figure walk them.
CUMULATIVE_SETS = tuple(set_patch(c) for c in CUMULATIVE)


# --- Lee et al.'s interventions (C21 un-alignment, C22 subtraction) ---------------------------
#: Key-vector scales tried for un-alignment (Lee: x10), on the top-7 toxic value vectors.
UNALIGN_TOP_K = 7
UNALIGN_FACTORS = (2.0, 5.0, 10.0)
#: Scales of the unit probe direction subtracted from the last MLP layer's output.
SUBTRACT_SCALES = (5.0, 10.0, 20.0)


def set_unalign(factor: float) -> str:
    return f"unalign:top{UNALIGN_TOP_K}:x{factor:g}"


def set_subtract(scale: float) -> str:
    return f"subtract:x{scale:g}"
