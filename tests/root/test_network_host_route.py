"""`Network(host_route=True)`: the subnet routed from the caller's namespace (root only).

The only network option that changes the caller's namespace: each test runs
it in a net namespace of its own (`unshare -n`), never in the host's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from nsbx_test_helpers import SANDBOX_PYTHON

import nsbox

pytestmark = pytest.mark.usefixtures("real_root")

SCRIPT = textwrap.dedent("""
    import socket, subprocess, sys, time
    import nsbox
    SERVER = ("import socket\\ns=socket.socket();s.bind(('0.0.0.0',5000));s.listen()\\n"
              "print('up',flush=True)\\nwhile True:\\n c,_=s.accept();c.sendall(b'hi');c.close()")
    def links():
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    plain = nsbox.Network("plain")
    with nsbox.Sandbox(["sleep", "30"], network=plain) as box:
        try:
            socket.create_connection((str(box.address), 5000), timeout=2)
            sys.exit("reached a network without a host route")
        except OSError:
            pass
        box.kill()
    routed = nsbox.Network("routed", subnet="10.77.0.0/24", host_route=True)
    with nsbox.Sandbox([sys.argv[1], "-c", SERVER], network=routed, stdout=nsbox.PIPE) as box:
        assert box.stdout.readline() == b"up\\n"
        assert "nsbx-hrouted" in links(), links()
        with socket.create_connection((str(box.address), 5000), timeout=5) as s:
            assert s.recv(10) == b"hi"
        box.kill()
    for _ in range(200):  # the hub leaves, and its link with it
        if "nsbx-hrouted" not in links():
            break
        time.sleep(0.05)
    assert links() == ["lo"], links()
    print("ok")
""")


def test_host_route_reaches_sandboxes_and_leaves_nothing():
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, SANDBOX_PYTHON],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_host_route_is_never_the_default():
    assert nsbox.Network("x").host_route is False
    with pytest.raises(nsbox.SpecError):
        nsbox.Network("x", host_route="yes")
