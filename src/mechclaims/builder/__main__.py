"""``python -m mechclaims.builder build --arch gpt2 --out fixtures/organism/gpt2`` / ``build-deep`` /
``check DIR`` / ``curve --out docs/organism-dpo-curve.png``.

An entry script: it sits above every module, so it may import both the runtime organism (where
the committed organisms live) and the builder."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mechclaims.builder",
                                 description="Build or verify the embedded model organism.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build one organism (seeded, deterministic on CPU)")
    b.add_argument("--arch", choices=("gpt2", "llama"), required=True)
    b.add_argument("--out", help="output directory (default fixtures/organism/<arch>)")
    b.add_argument("--micro", action="store_true", help="tiny sizes (for tests); no figures expected")
    b.add_argument("--seed", type=int, default=None)
    b.add_argument("--check", action="store_true",
                   help="do not build: verify the files in --out against its manifest")
    c = sub.add_parser("check", help="verify an organism directory against its manifest.json")
    c.add_argument("dir", nargs="+")
    d = sub.add_parser("build-deep", help="build organism:gpt2-deep (DPO with safety-recovery pairs) from the "
                       "committed gpt2 base, into <out>/deep/ with its manifest <out>/deep.json")
    d.add_argument("--root", help="the gpt2 organism directory it is built from (default fixtures/organism/gpt2)")
    d.add_argument("--out", help="where deep/ and deep.json go (default --root)")
    d.add_argument("--check", action="store_true", help="do not build: verify deep/ against deep.json")
    f = sub.add_parser("curve", help="draw the committed organisms' DPO training curves (README figure)")
    f.add_argument("--out", default="docs/organism-dpo-curve.png")
    args = ap.parse_args(argv)

    if args.cmd == "curve":
        from ..organism import ARCHS, organism_dir
        from .figure import plot

        print(plot({a: organism_dir(a) for a in ARCHS}, args.out))
        return 0

    from ..organism import organism_dir
    from .build import check, main_build

    if args.cmd == "build-deep":
        from .deep import check_deep, main_build_deep

        root = args.root or str(organism_dir("gpt2"))
        out = args.out or root
        if args.check:
            problems = check_deep(out)
            print(f"{out}: " + (f"{len(problems)} problem(s)" if problems else "ok"))
            for p in problems:
                print(f"  {p}")
            return 1 if problems else 0
        m = main_build_deep(root, out)
        ok = all(m["passed"].values())
        print(f"{out}/deep: built in {m['build_seconds']:.0f}s; acceptance {'met' if ok else 'NOT met'}: {m['passed']}")
        return 0 if ok else 1

    if args.cmd == "build" and not args.check:
        out = args.out or str(organism_dir(args.arch))
        m = main_build(args.arch, out, micro=args.micro, seed=args.seed)
        ok = all(m["passed"].values())
        print(f"{out}: built in {m['build_seconds']:.0f}s; acceptance "
              f"{'met' if ok else 'NOT met'}: {m['passed']}")
        return 0 if (ok or args.micro) else 1
    dirs = args.dir if args.cmd == "check" else [args.out or str(organism_dir(args.arch))]
    rc = 0
    for d in dirs:
        problems = check(d)
        if problems:
            rc = 1
            print(f"{d}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"{d}: ok")
    return rc


if __name__ == "__main__":
    sys.exit(main())
