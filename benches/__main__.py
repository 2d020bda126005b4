"""python -m benches [--quick] [--out DIR]: the benchmark report (see benches/README.md)."""

import argparse
from pathlib import Path

from .harness import FULL, QUICK, run

parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__)
parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke run)")
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where results go")
parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
args = parser.parse_args()
run(QUICK if args.quick else FULL, args.out, chart=not args.no_chart)
