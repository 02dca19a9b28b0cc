"""Dependency rules, checked on the source (AST) and in a fresh interpreter.

- only _native imports the cffi module (_nsbox_cffi);
- only _net imports pyroute2, only _dns dnspython, only _stats psutil, only _serve h11, and
  trio only _supervisor and _serve (the router, built on the supervisor) (enforced for every
  module, existing or future);
- the pure modules import only the standard library and each other;
- _cli does not import trio or pyroute2 at module level, and importing
  nsbox and nsbox._cli loads neither;
- bench/ (the benchmark suite: tooling the library never imports) may use
  trio and psutil inside functions, to measure the supervisor; never cffi.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import nsbox

PACKAGE_DIR = pathlib.Path(nsbox.__file__).resolve().parent

EXCLUSIVE = {  # third-party or native module -> the one nsbox module allowed to import it
    "nsbox._nsbox_cffi": "_native",
    "pyroute2": "_net",
    "dns": "_dns",
    "psutil": "_stats",
    "trio": ("_supervisor", "_serve"),
    "h11": "_serve",
}
PURE = {"_spec", "_plan", "_protocol", "_errors", "_frozen", "_serve_config"}
# No module-level import of these: the CLI's start-up, and a process's side of
# networks (the hub process alone runs netlink and DNS).
LIGHT = {"_cli": ("trio", "pyroute2", "dns", "h11"), "_network": ("pyroute2", "dns")}
TOOLING = ("bench.",)  # may import EXCLUSIVE's trio/psutil in functions, not at module level
TOOLING_MAY = ("trio", "psutil")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names, as seen from nsbox.<module>."""
    if not node.level:
        return node.module or ""
    package = ["nsbox", *module.split(".")[:-1]]  # nsbox/<module>.py lives in nsbox
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, source: str) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) for every import in `source`.

    `from X import y` yields X and X.y (y may be a submodule). Calls of
    importlib.import_module("...") and __import__("...") with a literal
    count as imports too.
    """
    tree = ast.parse(source)
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            found.append((base, top))
            found.extend((f"{base}.{alias.name}" if base else alias.name, top)
                         for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (name in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.append((node.args[0].value, top))
        inner = top and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
        )
        # Class bodies run at import time: they stay "module level".
        if isinstance(node, ast.ClassDef):
            inner = top
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def _matches(name: str, target: str) -> bool:
    return name == target or name.startswith(target + ".")


def violations(module: str, source: str) -> list[str]:
    """Every dependency rule `source` (the text of nsbox/<module>.py) breaks."""
    out: list[str] = []
    leaf = module.split(".")[-1]
    for name, top in imports(module, source):
        for target, owner in EXCLUSIVE.items():
            owners = owner if isinstance(owner, tuple) else (owner,)
            if _matches(name, target) and module not in owners:
                if module.startswith(TOOLING) and target in TOOLING_MAY and not top:
                    continue
                out.append(f"{module} imports {name} (only {owner} may)")
        if name.startswith("nsbox.bench") and not module.startswith(TOOLING) and top:
            out.append(f"{module} imports {name} at module level (the suite is tooling)")
        if leaf in PURE and "." not in module:
            root = name.split(".")[0]
            if root == "nsbox":
                sub = name.split(".")[1] if "." in name else ""
                if sub and sub not in PURE:
                    out.append(f"pure module {module} imports {name}")
            elif root not in sys.stdlib_module_names:
                out.append(f"pure module {module} imports non-stdlib {name}")
        for banned in LIGHT.get(module, ()):
            if top and _matches(name, banned):
                out.append(f"{module} imports {name} at module level")
    return out


def _modules():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR).with_suffix("")
        yield ".".join(rel.parts), path.read_text()


def test_package_obeys_the_dependency_rules():
    found = [v for module, source in _modules() for v in violations(module, source)]
    assert not found, "\n".join(found)


def test_the_known_modules_are_checked():
    names = {module for module, _ in _modules()}
    assert {"_native", "_cli", "_process", *PURE} <= names


CHECKER_CASES = [
    ("_process", "from . import _nsbox_cffi", True),
    ("_process", "from ._nsbox_cffi import ffi", True),
    ("_process", "from nsbox import _nsbox_cffi", True),
    ("_process", "import nsbox._nsbox_cffi", True),
    ("_process", "def f():\n    import importlib\n    importlib.import_module('trio')", True),
    ("_native", "from . import _nsbox_cffi", False),
    ("_foo", "import trio", True),
    ("_foo", "def f():\n    import psutil", True),
    ("_foo", "from pyroute2 import IPRoute", True),
    ("_supervisor", "import trio", False),
    ("_net", "import pyroute2.iproute", False),
    ("_stats", "import psutil", False),
    ("_net", "import trio", True),
    ("_spec", "import cffi", True),
    ("_spec", "from ._native import lib", True),
    ("_plan", "from ._spec import Spec\nimport dataclasses", False),
    ("_errors", "from __future__ import annotations\nimport errno", False),
    ("_protocol", "class A:\n    import attr", True),
    ("_cli", "import trio", True),
    ("bench.throughput", "def f():\n    import trio", False),
    ("bench.throughput", "import trio", True),
    ("bench.throughput", "def f():\n    from nsbox import _nsbox_cffi", True),
    ("_process", "from nsbox.bench import latency", True),
    ("_cli", "try:\n    import pyroute2\nexcept ImportError:\n    pass", True),
    ("_cli", "def f():\n    import subprocess\n    from . import _process", False),
    ("_cli", "def f():\n    import trio", True),  # still only _supervisor's
    ("testing.fakes", "import trio", True),
    ("_dns", "import dns.message", False),
    ("_hub", "import dns.message", True),
    ("_network", "import pyroute2", True),
    ("_spec", "from . import _network", True),
    ("_serve", "import trio\nimport h11", False),
    ("_serve_config", "import tomllib\nfrom . import _spec", False),
    ("_serve_config", "from . import _serve", True),
    ("_cli", "def f():\n    import h11", True),
    ("_process", "import h11", True),
]


def test_the_checker_catches_violations():
    wrong = [(module, source, violations(module, source))
             for module, source, bad in CHECKER_CASES
             if bool(violations(module, source)) != bad]
    assert not wrong


def test_importing_nsbox_and_the_cli_stays_light():
    code = (
        "import nsbox._cli, nsbox, sys\n"
        "heavy = [m for m in ('trio', 'pyroute2', 'dns', 'h11') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
