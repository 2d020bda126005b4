"""python -m benches [--quick] [--out DIR] [--only harness|writers]: the benchmark
report (see benches/README.md): the single-connection workloads and readers against
the pure-Python and legacy baselines (``harness``), then concurrent writers against the
stdlib and apsw baselines (``writers``)."""

import argparse
import sys
import tempfile
from pathlib import Path

from . import writers
from .harness import FULL, QUICK, run

parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__)
parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke run)")
COMMITTED = Path(__file__).parent / "results"
parser.add_argument(
    "--out", type=Path, default=None, help="where results go (default: benches/results; --quick: a temporary directory)"
)
parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
parser.add_argument("--only", choices=["harness", "writers"], help="run one part")
args = parser.parse_args()
if args.quick:
    # A smoke run's numbers are not the committed results: never over them.
    if args.out is not None and args.out.resolve() == COMMITTED.resolve():
        sys.exit(f"--quick never writes over the committed results in {COMMITTED}: choose another --out")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="consensus-db-bench-quick-"))
        print(f"--quick: results go to {args.out}")
elif args.out is None:
    args.out = COMMITTED
if args.only != "writers":
    run(QUICK if args.quick else FULL, args.out, chart=not args.no_chart)
if args.only != "harness":
    print()
    writers.run(*((1, 20) if args.quick else (5, 300)), args.out)
