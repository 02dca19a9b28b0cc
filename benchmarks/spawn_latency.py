#!/usr/bin/env python3
"""Spawn latency: nsbox against a C floor, unshare(1), bwrap, fork/exec.

The suite lives in the package (`python -m nsbox bench latency` runs the same
code); this script keeps the old command line and writes its build products
and results next to it, in benchmarks/.build and benchmarks/results.
"""

import sys
from pathlib import Path

from nsbox.bench import latency

HERE = Path(__file__).resolve().parent
latency.BUILD = HERE / ".build"
latency.RESULTS = HERE / "results"

if __name__ == "__main__":
    sys.exit(latency.main())
