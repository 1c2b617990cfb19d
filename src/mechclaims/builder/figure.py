"""The DPO training curves of the committed organisms, as a figure for the README.

``python -m mechclaims.builder curve --out docs/organism-dpo-curve.png`` reads each
organism's ``manifest.json`` (``dpo.curve`` and, for GPT-2, ``lora.curve``) and draws toxicity
on the challenge prompts and the DPO reward margin against the training step.
"""

from __future__ import annotations

import json
from pathlib import Path


def curves(roots: dict[str, Path]) -> dict[str, list[dict]]:
    """``{label: curve rows}`` for every organism directory in ``roots`` (label -> dir)."""
    out = {}
    for arch, root in roots.items():
        m = json.loads((Path(root) / "manifest.json").read_text())
        out[f"{arch} (lr {m['dpo']['lr']:g})"] = m["dpo"]["curve"]
        if "lora" in m:
            out[f"{arch}-lora (lr {m['lora']['lr']:g})"] = m["lora"]["curve"]
    return out


def plot(roots: dict[str, Path], path: str | Path) -> Path:
    """Write the two-panel figure (toxicity, reward margin) to ``path`` (PNG or SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..cache import atomic_write_bytes

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for label, rows in curves(roots).items():
        tox = [(r["step"], r["toxicity"]) for r in rows if r.get("toxicity") is not None]
        mar = [(r["step"], r["reward_margin"]) for r in rows if r.get("reward_margin") is not None]
        line, = ax_t.plot(*zip(*tox), marker="o", ms=3, label=label)
        ax_m.plot(*zip(*mar), color=line.get_color(), label=label)
    ax_t.set(xlabel="DPO step", ylabel="toxicity (lexicon, 600 challenge prompts)", ylim=(0, None),
             title="toxicity during DPO")
    ax_m.set(xlabel="DPO step", ylabel="reward margin (chosen - rejected)", title="reward margin")
    ax_t.legend(fontsize=8)
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
    import io

    buf = io.BytesIO()
    path = Path(path)
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=110, metadata={"Software": None}
                if path.suffix == ".png" else None)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
