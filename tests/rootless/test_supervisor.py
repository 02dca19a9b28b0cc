"""The trio supervisor against the real kernel: run, start, kill escalation,
cancellation, the end of the block, capacity, streams, many at once, and a
killed supervisor process. The autouse leak check (tests/conftest.py) fails
any test that leaves a process, an fd, a mount or a cgroup behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio
import trio.testing

import nsbox

pytestmark = pytest.mark.usefixtures("userns")


def arun(fn, *args):
    return trio.run(fn, *args)


def sleepers(procs, marker: str) -> list[int]:
    """The `sleep` commands carrying `marker` (not nsbox-init, whose argv holds it too)."""
    return [p for p in procs.marked(marker) if (procs.cmdline(p) or [b""])[0] == b"sleep"]


def test_run_like_subprocess_run():
    async def main():
        async with nsbox.open_supervisor() as sup:
            r = await sup.run(["sh", "-c", "cat; echo err >&2; exit 3"], input=b"hello",
                              capture_output=True)
            assert (r.returncode, r.stdout, r.stderr, r.reason) == (3, b"hello", b"err\n",
                                                                    "exited")
            assert r.stats.wall_time > 0 and r.pid > 0
            with pytest.raises(subprocess.CalledProcessError):
                await sup.run(["false"], check=True)
            with pytest.raises(subprocess.TimeoutExpired) as info:
                await sup.run(["sh", "-c", "echo partial; exec sleep 30"], timeout=0.5,
                              capture_output=True)
            assert info.value.stdout == b"partial\n"
            st = sup.statistics()
            assert (st.live, st.starting, st.exited, st.failed) == (0, 0, 3, 0)

    arun(main)


def test_setup_errors_raise_in_start():
    async def main():
        async with nsbox.open_supervisor() as sup:
            with pytest.raises(nsbox.CommandNotFoundError):
                await sup.start(["/nonexistent/command"])
            with pytest.raises(nsbox.SpecError):
                await sup.start(["true"], hostname="bad_name")
            st = sup.statistics()
            assert st.failed == 1 and st.live == 0  # bad input changes nothing

    arun(main)


def test_start_returns_when_running_and_kill_escalates():
    async def main():
        async with nsbox.open_supervisor(grace=0.3) as sup:
            box = await sup.start(["sleep", "60"])
            assert box.returncode is None and sup.statistics().live == 1
            assert box.stats().pids == 2  # init and sleep
            await box.kill()
            assert (box.returncode, box.reason) == (-signal.SIGTERM, "killed")
            stubborn = await sup.start(["sh", "-c", "trap '' TERM; echo ready; sleep 60"],
                                       stdout=nsbox.PIPE)
            assert await stubborn.stdout.receive_some(10) == b"ready\n"  # the trap is set
            t = trio.current_time()
            await stubborn.kill()
            assert stubborn.returncode == -signal.SIGKILL
            assert trio.current_time() - t >= 0.3
            result = await stubborn.wait()
            assert result.returncode == -signal.SIGKILL and result.reason == "killed"
            await stubborn.aclose()

    arun(main)


def test_cancelled_run_kills_and_reaps(procs, sleep_marker):
    async def main():
        async with nsbox.open_supervisor(grace=0.2) as sup:
            with trio.move_on_after(0.5) as scope:
                await sup.run(["sleep", sleep_marker])
            assert scope.cancelled_caught
            assert sup.statistics().live == 0
        assert procs.marked(sleep_marker) == []

    arun(main)


def test_leaving_the_block_ends_every_sandbox(procs, sleep_marker):
    boxes = []

    async def main():
        async with nsbox.open_supervisor(grace=0.2) as sup:
            for _ in range(10):
                boxes.append(await sup.start(["sleep", sleep_marker]))
            assert len(sleepers(procs, sleep_marker)) == 10

    arun(main)
    assert [b.returncode for b in boxes] == [-signal.SIGTERM] * 10
    assert procs.marked(sleep_marker) == []


def test_an_exception_in_the_block_still_ends_them(procs, sleep_marker):
    async def main():
        async with nsbox.open_supervisor(grace=0.2) as sup:
            await sup.start(["sleep", sleep_marker])
            raise KeyError("boom")

    with pytest.raises(KeyError):
        arun(main)
    assert procs.marked(sleep_marker) == []


def test_a_nursery_owns_what_it_started(procs, sleep_marker):
    async def main():
        async with nsbox.open_supervisor(grace=0.2) as sup:
            async with trio.open_nursery() as nursery:
                box = await nursery.start(sup.run, ["sleep", sleep_marker])
                assert box.returncode is None
                nursery.cancel_scope.cancel()
            assert box.returncode is not None
            assert procs.marked(sleep_marker) == []

    arun(main)


def test_cancel_a_nursery_holding_many(procs, sleep_marker):
    async def main():
        async with nsbox.open_supervisor(grace=0.5) as sup:
            with trio.move_on_after(30) as scope:
                async with trio.open_nursery() as nursery:
                    for _ in range(100):
                        await nursery.start(sup.run, ["sleep", sleep_marker])
                    assert sup.statistics().live == 100
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
            assert sup.statistics().live == 0

    arun(main)
    assert procs.marked(sleep_marker) == []


def test_capacity_queues_or_raises():
    async def main():
        async with nsbox.open_supervisor(max_live=2, grace=0) as sup:
            assert (sup.capacity, sup.limit) == (2, "max_live")
            a = await sup.start(["sleep", "60"])
            await sup.start(["sleep", "60"])
            with pytest.raises(nsbox.CapacityError) as info:
                await sup.start(["true"], wait=False)
            assert info.value.limit == "max_live" and info.value.capacity == 2
            async with trio.open_nursery() as n:
                n.start_soon(sup.run, ["true"])
                await trio.sleep(0.2)
                assert sup.statistics().waiting == 1  # queued, not failed
                await a.kill()
            assert sup.statistics().waiting == 0 and sup.statistics().exited == 2

    arun(main)


def test_streams():
    async def main():
        async with nsbox.open_supervisor() as sup:
            box = await sup.start(["sh", "-c", "read x; echo got $x"], stdin=nsbox.PIPE,
                                  stdout=nsbox.PIPE)
            async with box:
                await box.stdin.send_all(b"ping\n")
                data = b""
                while not data.endswith(b"\n"):
                    data += await box.stdout.receive_some(100)
                assert data == b"got ping\n"
                assert (await box.wait()).returncode == 0

    arun(main)


def test_many_at_once():
    async def main():
        results = []
        async with nsbox.open_supervisor() as sup:
            async with trio.open_nursery() as n:
                for i in range(200):
                    async def one(i=i):
                        results.append(await sup.run(["sh", "-c", f"exit {i % 7}"]))
                    n.start_soon(one)
            assert sup.statistics().exited == 200
        assert sorted(r.returncode for r in results) == sorted(i % 7 for i in range(200))

    arun(main)


def test_one_fd_per_running_sandbox_and_exact_statuses():
    """The report pipe closes once the command runs; the end (a signal death
    too, which init itself cannot die of) arrives through the status slot."""
    import os

    async def main():
        async with nsbox.open_supervisor(grace=5) as sup:
            before = len(os.listdir("/proc/self/fd"))
            boxes = [await sup.start(["sleep", "60"]) for _ in range(20)]
            held = len(os.listdir("/proc/self/fd")) - before
            assert held == 20, held  # a pidfd each (plus the shared status file once)
            for box in boxes[:10]:
                box.send_signal(signal.SIGKILL)  # init forwards nothing: the kernel kills it
            for box in boxes[10:]:
                await box.kill()  # SIGTERM, forwarded to sleep, which dies of it
            codes = [(await box.wait()).returncode for box in boxes]
            assert codes == [-signal.SIGKILL] * 10 + [-signal.SIGTERM] * 10
            ends = await sup.run(["sh", "-c", "kill -USR1 $$"])
            assert ends.returncode == -signal.SIGUSR1 and ends.reason == "signaled"
            assert (await sup.run(["sh", "-c", "exit 7"])).returncode == 7
            timed = await sup.start(["sh", "-c", "exit 3"], timings=True)  # keeps its pipe
            assert (await timed.wait()).returncode == 3 and timed._box.timings

    arun(main)


def test_starts_in_flight_when_the_block_ends_are_ended_with_it(procs, sleep_marker):
    # Starts from a nursery that outlives the supervisor's block: those in flight
    # when it ends land and are ended with the rest; later ones raise.
    boxes, errors = [], []

    async def main():
        async with trio.open_nursery() as outer:
            async with nsbox.open_supervisor(grace=0.2) as sup:
                async def one():
                    try:
                        boxes.append(await sup.start(["sleep", sleep_marker]))
                    except trio.ClosedResourceError as exc:
                        errors.append(exc)

                for _ in range(20):
                    outer.start_soon(one)
                await trio.sleep(0.005)  # some landed, some in flight, some not begun
            st = sup.statistics()
            assert (st.starting, st.live) == (0, 0)
        assert len(boxes) + len(errors) == 20
        assert all(b.returncode is not None for b in boxes)

    arun(main)
    assert procs.marked(sleep_marker) == []


def test_a_warm_pool_yields_its_room_to_a_start_it_does_not_match():
    async def main():
        async with nsbox.open_supervisor(max_live=2, grace=0) as sup:
            pool = sup.pool(["true"], size=2, hostname="nsbx-warm")
            with trio.fail_after(60):  # a guard, not a timing goal
                while pool.ready < 2:
                    await trio.sleep(0.01)
                assert sup.statistics().pooled == 2
                r = await sup.run(["echo", "cold"], capture_output=True)
                assert r.stdout == b"cold\n" and pool.evicted == 1  # a parked slot gave way
                while pool.ready < 2:  # refilled, once there is room again
                    await trio.sleep(0.01)
                box = await sup.start(["sleep", "60"], wait=False)  # not a CapacityError
                assert pool.evicted == 2
                st = sup.statistics()
                assert (st.live, st.waiting) == (1, 0)
                await box.kill()

    arun(main)


def test_a_start_waiting_for_room_gets_the_refill_made_meanwhile():
    async def main():
        async with nsbox.open_supervisor(grace=0.2, max_live=1) as sup:
            sup.pool(["true"], size=1, hostname="nsbx-warm")
            await trio.testing.wait_all_tasks_blocked()  # the refill holds the only room
            with trio.fail_after(60):  # a guard: it must not wait for ever
                r = await sup.run(["echo", "cold"], capture_output=True)
            assert r.stdout == b"cold\n"

    arun(main)


KI_IN_GRACE = textwrap.dedent("""
    import sys, trio, nsbox
    async def main():
        async with nsbox.open_supervisor(grace=30) as sup:
            for _ in range(3):
                await sup.start(["sh", "-c", "trap '' TERM; exec sleep " + sys.argv[1]])
            print("leaving", flush=True)
    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("plain KeyboardInterrupt", flush=True)
""")


def test_ctrl_c_in_the_grace_hurries_the_end_and_is_raised_plain(procs, sleep_marker):
    # A ^C while the block's end waits out the grace: SIGKILL at once, then the
    # KeyboardInterrupt, not a hang until the commands end on their own.
    proc = subprocess.Popen([sys.executable, "-c", KI_IN_GRACE, sleep_marker],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "leaving\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)  # a guard: the grace is 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out == "plain KeyboardInterrupt\n"
    assert procs.wait_gone(sleep_marker, timeout=5) == []


def test_bad_input_raises_before_waiting_for_room():
    async def main():
        async with nsbox.open_supervisor(max_live=1, grace=0) as sup:
            await sup.start(["sleep", "60"])
            for wait in (False, True):
                with pytest.raises(nsbox.SpecError):
                    with trio.fail_after(30):  # a guard: it must not queue
                        await sup.start(["true"], hostname="bad_name", wait=wait)
            st = sup.statistics()
            assert (st.waiting, st.live) == (0, 1)

    arun(main)


def test_run_text_mode_and_timeouts_like_subprocess_run():
    async def main():
        async with nsbox.open_supervisor(grace=0) as sup:
            r = await sup.run(["sh", "-c", "cat; printf 'a\\r\\nb'"], input="héllo\n",
                              capture_output=True, text=True)
            assert r.stdout == "héllo\na\nb"  # str, universal newlines
            r = await sup.run(["cat"], input="x", capture_output=True, encoding="latin-1")
            assert r.stdout == "x"
            with pytest.raises(TypeError):
                await sup.run(["cat"], input="not bytes", capture_output=True)
            with pytest.raises(subprocess.TimeoutExpired):
                await sup.run(["sleep", "60"], timeout=-1)  # a past deadline, as subprocess
            with pytest.raises(nsbox.SpecError):
                await sup.start(["echo"], stdout=nsbox.PIPE, text=True)  # streams are bytes
            st = sup.statistics()
            assert (st.live, st.starting) == (0, 0)

    arun(main)


def test_statistics_count_cancelled_starts_and_refills_apart():
    async def main():
        async with nsbox.open_supervisor(max_live=2, grace=0) as sup:
            with trio.move_on_after(0):
                await sup.start(["sleep", "60"])
            assert sup.statistics().failed == 0  # a cancellation is not a setup error
            await sup.start(["sleep", "60"])
            await sup.start(["sleep", "60"])
            sup.pool(["true"], size=1, hostname="nsbx-refill")  # full: it waits for room
            await trio.sleep(0.1)
            st = sup.statistics()
            assert (st.waiting, st.pooled, st.live) == (0, 0, 2)  # no start is queued

    arun(main)


def test_a_warm_runs_wall_time_starts_when_it_runs():
    async def main():
        async with nsbox.open_supervisor(grace=0) as sup:
            pool = sup.pool(["true"], size=1, hostname="nsbx-wall")
            with trio.fail_after(60):
                while pool.ready < 1:
                    await trio.sleep(0.01)
            await trio.sleep(2)  # parked: not the run's time
            began = time.monotonic()
            r = await sup.run(["true"], hostname="nsbx-wall")
            assert pool.taken == 1
            assert r.stats.wall_time <= time.monotonic() - began  # within the call, not 2 s more

    arun(main)


def test_bad_settings_are_spec_errors():
    async def main(**kw):
        async with nsbox.open_supervisor(**kw):
            pass

    for kw in ({"grace": -1}, {"grace": float("nan")}, {"grace": True}, {"max_live": 0},
               {"max_live": 1.5}):
        with pytest.raises(nsbox.SpecError):
            trio.run(lambda kw=kw: main(**kw))


KILLED = textwrap.dedent("""
    import sys, trio, nsbox
    async def main():
        async with nsbox.open_supervisor() as sup:
            pool = sup.pool(["x"], size=5)  # parked slots must die with us too
            while pool.ready < 5:
                await trio.sleep(0.01)
            for _ in range(20):
                await sup.start(["sleep", sys.argv[1]])
            print("ready", flush=True)
            await trio.sleep(60)
    trio.run(main)
""")


def test_a_killed_supervisor_process_takes_its_sandboxes(procs, sleep_marker):
    p = subprocess.Popen([sys.executable, "-c", KILLED, sleep_marker], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert len(sleepers(procs, sleep_marker)) == 20
        assert len(procs.marked("nsbox-warm-slot")) >= 5  # parked, and used ones' inits
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    t = time.monotonic()
    assert procs.wait_gone(sleep_marker, timeout=2.0) == []
    assert procs.wait_gone("nsbox-warm-slot", timeout=2.0) == []  # the parked slots' inits
    assert time.monotonic() - t < 2.0


def test_bounded_stress_two_thousand_at_once(procs, sleep_marker):
    """2,000 sandboxes live at once under one supervisor, then all ended by
    leaving the block: nothing left (the autouse check covers fds too)."""
    async def main():
        async with nsbox.open_supervisor(grace=1.0) as sup:
            need = 2000
            if sup.capacity < need:
                pytest.skip(f"capacity here is {sup.capacity} ({sup.limit})")
            limiter = trio.CapacityLimiter(64)

            async def one():
                async with limiter:
                    await sup.start(["sleep", sleep_marker])

            with trio.fail_after(120):
                async with trio.open_nursery() as n:
                    for _ in range(need):
                        n.start_soon(one)
            st = sup.statistics()
            assert (st.live, st.failed, st.starting) == (need, 0, 0)

    t = time.monotonic()
    arun(main)
    assert time.monotonic() - t < 120
    assert procs.wait_gone(sleep_marker, timeout=10) == []


# -- warm pools ------------------------------------------------------------------------------


async def _wait_ready(pool, n: int) -> None:
    with trio.fail_after(10):
        while pool.ready < n:
            await trio.sleep(0.01)


def test_warm_pool_serves_matching_starts_with_per_run_parts():
    async def main():
        async with nsbox.open_supervisor() as sup:
            pool = sup.pool(["placeholder"], size=2, hostname="warm")
            await _wait_ready(pool, 2)
            assert sup.statistics().pooled == 2
            r = await sup.run(["sh", "-c", "echo $FOO $(pwd) $(hostname); cat; exit 4"],
                              hostname="warm", env={"FOO": "bar", "PATH": "/usr/bin:/bin"},
                              cwd="/etc", input=b"in", capture_output=True)
            assert (r.returncode, r.stdout, r.reason) == (4, b"bar /etc warm\nin", "exited")
            assert pool.taken == 1
            # Options seen before take the quick way to the pool: the per-run
            # parts are still validated there, before a slot is taken.
            for bad in ({"args": ["a\0b"]}, {"args": ["true"], "env": {"A=": "1"}},
                        {"args": ["true"], "cwd": "relative"}, {"args": ["a\0b"]},
                        {"args": ["true"], "cwd": "relative"}):  # (twice: nothing remembered)
                with pytest.raises(nsbox.SpecError):
                    await sup.run(bad.pop("args"), hostname="warm", **bad)
            assert pool.taken == 1 and sup.statistics().failed == 0
            # A spec that differs beyond args/env/cwd starts cold.
            r = await sup.run(["hostname"], hostname="cold", capture_output=True)
            assert r.stdout == b"cold\n" and pool.taken == 1
            # Setup errors from a slot raise as from a cold start.
            await _wait_ready(pool, 2)  # refills start a little after a take
            with pytest.raises(nsbox.CommandNotFoundError):
                await sup.run(["/nonexistent"], hostname="warm")
            await _wait_ready(pool, 2)
            with pytest.raises(nsbox.SandboxSetupError) as info:
                await sup.run(["true"], hostname="warm", cwd="/nonexistent-dir")
            assert info.value.stage == "chdir"
            await _wait_ready(pool, 2)  # refilled in the background
            assert pool.taken == 3 and sup.statistics().failed == 2

    arun(main)


def test_warm_runs_see_the_callers_environment_as_it_is_then(monkeypatch):
    """A warm slot gets the caller's environment of the moment it is taken
    (env=None), though the same start is made again and again."""
    async def main():
        async with nsbox.open_supervisor() as sup:
            pool = sup.pool(["placeholder"], size=1, hostname="warm")
            for value in ("one", "two", "two", "three"):
                monkeypatch.setenv("NSBX_WARM_VALUE", value)
                await _wait_ready(pool, 1)
                r = await sup.run(["sh", "-c", "echo $NSBX_WARM_VALUE"], hostname="warm",
                                  capture_output=True)
                assert r.stdout == f"{value}\n".encode()
            monkeypatch.delenv("NSBX_WARM_VALUE")
            await _wait_ready(pool, 1)
            r = await sup.run(["sh", "-c", "echo ${NSBX_WARM_VALUE-unset}"], hostname="warm",
                              capture_output=True)
            assert r.stdout == b"unset\n" and pool.taken == 5

    arun(main)


def test_warm_slots_are_single_use_and_ended_with_the_supervisor(procs):
    async def main():
        async with nsbox.open_supervisor() as sup:
            pool = sup.pool(["x"], size=3)
            await _wait_ready(pool, 3)
            pids = [(await sup.start(["sleep", "60"])).pid for _ in range(3)]
            assert len(set(pids)) == 3  # three slots, each used once
            await _wait_ready(pool, 3)
        # Leaving the block ended the live sandboxes and the parked slots.

    arun(main)


def test_pool_settings_are_checked():
    async def main():
        async with nsbox.open_supervisor() as sup:
            for size in (0, -1, 1.5, True):
                with pytest.raises(nsbox.SpecError):
                    sup.pool(["x"], size=size)
            with pytest.raises(nsbox.SpecError):
                sup.pool(["x"], size=1, pass_fds=[5])
            pool = sup.pool(["x"], size=1)
            with pytest.raises(ValueError):
                sup.pool(["y"], size=1)  # the same spec but for args
            pool.close()
            assert sup.statistics().pooled == 0

    arun(main)


def _slot():
    return nsbox.Sandbox(["slot"], _park=True, stdin=nsbox.DEVNULL, stdout=nsbox.DEVNULL,
                         stderr=nsbox.DEVNULL)


def test_parked_slot_ends_cleanly_on_eof_a_signal_or_a_bad_request():
    slot = _slot()
    slot._park_sock.close()  # the pool let it go: init exits 0 with nothing run
    slot._park_sock = None
    assert slot.wait(timeout=10) == 0
    slot.close()
    slot = _slot()
    slot.terminate()  # a signal while parked ends it
    assert slot.wait(timeout=10) == 128 + signal.SIGTERM
    slot.close()
    slot = _slot()
    slot._park_sock.send(b"short")  # not a request: nothing runs
    assert slot.wait(timeout=10) == 125
    slot.close()
