"""Pack ``shallow-alignment``: is the fine-tune's change more than a few tokens deep?

Qi et al., "Safety Alignment Should Be Made More Than Just a Few Tokens Deep" (ICLR 2025;
arXiv 2406.05946): alignment often changes the next-token distribution only over the first few
generated tokens, so prefilling a few tokens of an unaligned answer undoes it. The pack reads
``mechclaims.depth`` (per-token KL, prefilled generations) and the statistics pass's early
positions. ``pytest claims/shallow_alignment`` runs this pack alone; ``pytest claims/dpo_toxicity``
runs the other one and computes nothing of this one.
"""

from mechclaims.claim import Pack, Paper, register_pack

PACK = register_pack(Pack(
    id="shallow-alignment",
    title="How deep is the detox? (shallow safety alignment)",
    description="Alignment that changes only the first few tokens is undone by prefilling a few "
                "tokens; training on safety-recovery examples makes it deeper.",
    papers=(
        Paper(title="Safety Alignment Should Be Made More Than Just a Few Tokens Deep",
              authors="Qi, Panda, Lyu, Ma, Roy, Beirami, Mittal, Henderson", arxiv="2406.05946",
              venue="ICLR 2025 (outstanding paper)",
              code="github.com/Unispac/shallow-vs-deep-alignment"),
    ),
))
