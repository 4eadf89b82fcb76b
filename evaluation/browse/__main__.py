"""``python -m evaluation.browse REF [--compare REF2 ...] --out DIR`` (see ``evaluation.browse``)."""
from __future__ import annotations

import argparse
import sys

from evaluation.report import add_history_options


def main(argv: list[str] | None = None) -> int:
    from evaluation import browse as package

    p = argparse.ArgumentParser(prog="python -m evaluation.browse", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="registry ref of the run's last checkpoint (rl:latest) or a checkpoint folder")
    p.add_argument("--compare", action="append", default=[], metavar="REF2",
                   help="another checkpoint to show beside the lineage (repeat); compared with REF on the same questions")
    p.add_argument("--out", help="output folder (default $PATHOR1_HOME/reports/browse-<ref>)")
    add_history_options(p)
    p.add_argument("--inline-max", type=int, default=None, metavar="BYTES",
                   help="images up to this size are inlined into data.js, larger ones copied (default 2048)")
    args = p.parse_args(argv)
    try:
        index = package.browse(args.ref, args.compare, out=args.out, home=args.home, reward_tags=args.reward_tags,
                               logs=args.logs, inline_max=args.inline_max)
    except LookupError as e:  # an unknown registry ref
        print(f"python -m evaluation.browse: error: {e}", file=sys.stderr)
        return 2
    print(f"browser written to {index}  (open it in a browser; the folder is self-contained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
