"""Unit tier: pure functions only. No sandboxes, no user namespaces.

The shared Hypothesis strategies live in nsbox_strategies.py next to this
file; tests import them by name (pytest runs with --import-mode=importlib,
which does not put test directories on sys.path).
"""

import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
