"""Phase timestamps (timings=True): every phase, in order, only when asked."""

from __future__ import annotations

import pytest

import nsbox
from nsbox._process import PHASES

pytestmark = pytest.mark.usefixtures("userns")


def test_timings_cover_every_phase_in_order():
    r = nsbox.run(["/bin/true"], timings=True)
    t = r.timings
    assert list(t) == list(PHASES)  # cgroup and the rest are marked even when they do nothing
    # The caller resumes ("spawned") while init starts: those two run side by side.
    values = [v for k, v in t.items() if k != "spawned"]
    assert values[0] == 0.0 and values == sorted(values)
    assert t["exec_init"] <= t["spawned"] <= t["reaped"] < 5.0


def test_no_timings_unless_asked():
    assert nsbox.run(["/bin/true"]).timings is None
    with nsbox.Sandbox(["/bin/true"]) as box:
        box.wait()
        assert box.timings is None


def test_timings_of_a_running_sandbox_and_without_namespaces():
    with nsbox.Sandbox(["sleep", "30"], timings=True) as box:
        running = box.timings
        assert "exec" in running and "exited" not in running and "reaped" not in running
        box.kill()
        box.wait()
        assert "reaped" in box.timings and "exited" not in box.timings  # init died with it
    r = nsbox.run(["/bin/true"], namespaces=["user"], timings=True)
    assert list(r.timings) == list(PHASES)


def test_timings_with_a_setup_failure():
    import errno

    with pytest.raises(nsbox.MountError):
        nsbox.run(["/bin/true"], timings=True, _debug_fail=("mount", errno.EIO))
