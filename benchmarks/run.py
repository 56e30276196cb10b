"""`make bench`: every benchmark in turn (tables on stdout, JSON in benchmarks/results/)."""
from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = ("bench_fractals", "bench_train", "bench_as_distance", "bench_toys", "bench_quality", "bench_video",
           "bench_explore")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="short versions (minutes)")
    p.add_argument("--only", help="comma-separated benchmark names")
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else BENCHES
    for name in names:
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            continue
        print(f"\n== {name} ==", flush=True)
        mod.main(["--quick"] if a.quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
