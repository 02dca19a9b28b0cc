#!/usr/bin/env python3
"""Network wiring cost: `python -m nsbox bench wiring` (see src/nsbox/bench/wiring.py).

Kept as a script for the issue's name; the suite's part is the same code.
    python benchmarks/net_wiring.py [--quick] [--json FILE]
"""

import sys

from nsbox.bench import main

if __name__ == "__main__":
    sys.exit(main([*sys.argv[1:], "wiring"]))
