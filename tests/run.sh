#!/usr/bin/env bash
# The whole test suite, in every mode this machine allows:
#   1. as the calling user (root: every tier, including tests/root),
#   2. as root in a user namespace (`unshare -r`): native + rootless tiers,
#   3. as uid 65534 from a venv of Debian's /usr/bin/python3 in a world-readable
#      directory, with the package installed from a copy of this tree: native +
#      rootless tiers. (2 and 3 run only when the caller is root.)
# Installs the test extra first. Exit 0 only if every mode passed and ran tests.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# Our own venv unless told otherwise: distributions' pythons refuse pip installs (PEP 668).
if [ -z "${PYTHON:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PYTHON=.venv/bin/python
fi
export NSBOX_MUST_WORK=${NSBOX_MUST_WORK:-0}
export PYTHONDONTWRITEBYTECODE=1

say() { printf '\n=== %s\n' "$*"; }

# pytest's exit 5 means "no tests ran": that is a failure here, never a pass.
run_pytest() {
    local rc=0
    "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "tests/run.sh: pytest collected no tests ($*)" >&2
        return 1
    fi
    return "$rc"
}

say "installing nsbox with the test extra ($PYTHON)"
"$PYTHON" -m pip install -q -e ".[test]"

say "mode 1: $(id -un) (uid $(id -u)): all tiers"
run_pytest "$PYTHON" -m pytest -q tests

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: not root: the unshare -r and uid 65534 modes need root to set up; skipped"
    if [ "$NSBOX_MUST_WORK" = 1 ]; then
        echo "tests/run.sh: NSBOX_MUST_WORK=1 requires every mode" >&2
        exit 1
    fi
    exit 0
fi

say "mode 2: root in a user namespace (unshare -r): native + rootless"
run_pytest unshare -r "$PYTHON" -m pytest -q tests/native tests/rootless

say "mode 3: uid 65534 from a venv of /usr/bin/python3: native + rootless"
if ! /usr/bin/python3 -c 'import ensurepip, sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    echo "installing python3-venv and python3-dev (Debian)"
    apt-get update -qq && apt-get install -y -qq python3-venv python3-dev >/dev/null
fi
work=$(mktemp -d /tmp/nsbx-test-XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
venv="$work/venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q -U pip "setuptools>=77"
# A copy of the tracked tree (and uncommitted edits), readable by everyone.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"
"$venv/bin/pip" install -q "$work/src[test]"
chmod -R a+rX "$work"
# The package sits in src/ (not importable from the tree's root): the tests
# import nsbox from the venv, as a user's would.
cd "$work/src"
run_pytest setpriv --reuid=65534 --regid=65534 --clear-groups \
    env HOME="$work" HYPOTHESIS_PROFILE=ci \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/native tests/rootless
cd "$here"
say "all modes passed"
