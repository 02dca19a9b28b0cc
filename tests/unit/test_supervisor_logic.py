"""The supervisor's logic on a fake launcher and trio's MockClock: states,
statistics, admission, kill escalation, cancellation; a Hypothesis rule-based
state machine checks the invariants over random sequences."""

from __future__ import annotations

import errno
import os
import signal

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from nsbox_strategies import (
    abs_paths,
    argvs,
    envs,
    hostile_argvs,
    hostile_envs,
    hostnames,
    ids,
    mount_lists,
)

import nsbox
from nsbox._spec import _signature
from nsbox._supervisor import _pool_key, _run_spec, open_supervisor


class FakeBox:
    """A sandbox the test controls. Its 'pidfd' is a pipe's read end, readable
    once it has exited; SIGTERM ends it unless `stubborn`; SIGKILL always."""

    instances: list[FakeBox] = []

    def __init__(self, args, _lazy_start=False, stubborn=False, fail=None, **options):
        if fail is not None:
            raise fail
        self.args = args
        self.spec = None
        self.pid = 1000 + len(FakeBox.instances)
        self.stubborn = stubborn
        self.returncode = None
        self.reason = None
        self._cause = None
        self._start_pending = False
        self._report_fd = -1
        self.stdin = self.stdout = self.stderr = None
        self.signals: list[int] = []
        self._r, self._w = os.pipe()
        self._exit_status = None
        self.closed = False
        FakeBox.instances.append(self)

    # what the supervisor uses
    @property
    def pidfd(self):
        return self._r if self._r >= 0 else -1

    timings = None

    def stats(self):
        return None

    def exit(self, code: int) -> None:
        if self._exit_status is None:
            self._exit_status = code
            os.write(self._w, b"x")

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._cause = "killed"
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.stubborn):
            self.exit(-sig)

    def poll(self):
        if self.returncode is None and self._exit_status is not None:
            self.returncode = self._exit_status
            self.reason = "killed" if self.returncode < 0 and self._cause else "exited"
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1
        return self.returncode

    def _complete_start(self):
        pass  # a fake starts at once

    def _kill_and_reap(self):
        self.send_signal(signal.SIGKILL)
        self.poll()

    def close(self):
        self.closed = True
        if self.returncode is None:
            self._kill_and_reap()


@pytest.fixture(autouse=True)
def _fresh():
    FakeBox.instances.clear()
    yield
    assert all(b.closed and b.returncode is not None for b in FakeBox.instances)


def run(main):
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_kill_escalation_waits_exactly_the_grace():
    async def main():
        async with open_supervisor(grace=5, _launcher=FakeBox) as sup:
            box = await sup.start(["x"], stubborn=True)
            t = trio.current_time()
            await box.kill()
            assert trio.current_time() - t == pytest.approx(5)
            assert box._box.signals == [signal.SIGTERM, signal.SIGKILL]
            polite = await sup.start(["y"])
            t = trio.current_time()
            await polite.kill()
            assert trio.current_time() == t and polite.returncode == -signal.SIGTERM

    run(main)


def test_end_of_block_and_cancellation_use_the_grace():
    async def main():
        with trio.CancelScope() as scope:
            async with open_supervisor(grace=3, _launcher=FakeBox) as sup:
                for _ in range(5):
                    await sup.start(["x"], stubborn=True)
                t = trio.current_time()
                scope.cancel()
                await trio.sleep(100)  # cancelled at once
        # SIGTERM at t, SIGKILL at t + 3: the shutdown is shielded from the cancel.
        assert trio.current_time() - t == pytest.approx(3)
        assert [b.signals for b in FakeBox.instances] == [[signal.SIGTERM, signal.SIGKILL]] * 5

    run(main)


def test_admission_queues_in_order_of_capacity():
    async def main():
        async with open_supervisor(max_live=2, grace=0, _launcher=FakeBox) as sup:
            a = await sup.start(["a"])
            await sup.start(["b"])
            with pytest.raises(nsbox.CapacityError):
                await sup.start(["c"], wait=False)
            started = []

            async def later():
                started.append(await sup.start(["c"]))

            async with trio.open_nursery() as n:
                n.start_soon(later)
                await trio.sleep(10)
                assert not started and sup.statistics().waiting == 1
                a._box.exit(0)
            assert started and sup.statistics().live == 2

    run(main)


def test_setup_failure_frees_the_slot():
    async def main():
        async with open_supervisor(max_live=1, _launcher=FakeBox) as sup:
            with pytest.raises(nsbox.CommandNotFoundError):
                await sup.start(["x"], fail=nsbox.CommandNotFoundError(2, "nsbox: no"))
            box = await sup.start(["y"])
            st = sup.statistics()
            assert (st.failed, st.live) == (1, 1)
            box._box.exit(0)

    run(main)


def test_a_full_address_pool_queues_starts_like_any_limit():
    free = [0]  # addresses left on the fake network

    class NetBox(FakeBox):
        def __init__(self, args, **options):
            if args == ["net"]:
                if not free[0]:
                    raise nsbox.NetworkSetupError(
                        errno.ENOSPC, "nsbox: network 'x' (10.9.0.0/24) has no free address",
                        stage="network")
                free[0] -= 1
            super().__init__(args, **options)

    async def main():
        async with open_supervisor(grace=0, _launcher=NetBox) as sup:
            holder = await sup.start(["other"])
            with pytest.raises(nsbox.CapacityError) as info:
                await sup.start(["net"], wait=False)
            assert info.value.limit == "addresses"
            started = []

            async def later():
                started.append(await sup.start(["net"]))

            async with trio.open_nursery() as n:
                n.start_soon(later)
                await trio.sleep(10)
                assert not started and sup.statistics().waiting == 1
                free[0] = 1  # an address given back (here: with a sandbox's end)
                holder._box.exit(0)
            await trio.testing.wait_all_tasks_blocked()  # the holder's watcher too
            st = sup.statistics()
            assert started and (st.failed, st.waiting, st.live) == (0, 0, 1)
            started[0]._box.exit(0)

    run(main)


class SupervisorMachine(RuleBasedStateMachine):
    """Random starts, exits, kills, cancellations and time; the invariants
    hold after every step."""

    def __init__(self):
        super().__init__()
        FakeBox.instances.clear()
        self.steps: list[tuple] = []

    @rule(stubborn=st.booleans())
    def start(self, stubborn):
        self.steps.append(("start", stubborn))

    @rule(i=st.integers(0, 20), code=st.integers(-15, 3))
    def exit(self, i, code):
        self.steps.append(("exit", i, code))

    @rule(i=st.integers(0, 20))
    def kill(self, i):
        self.steps.append(("kill", i))

    @rule(dt=st.floats(0, 10))
    def sleep(self, dt):
        self.steps.append(("sleep", dt))

    @invariant()
    def replay_keeps_invariants(self):
        FakeBox.instances.clear()
        steps = list(self.steps)

        async def main():
            async with open_supervisor(grace=2, max_live=4, _launcher=FakeBox) as sup:
                handles = []
                async with trio.open_nursery() as n:
                    for step in steps:
                        if step[0] == "start":
                            try:
                                handles.append(await sup.start(["x"], stubborn=step[1],
                                                               wait=False))
                            except nsbox.CapacityError:
                                assert sup.statistics().live == 4
                        elif step[0] == "exit" and handles:
                            handles[step[1] % len(handles)]._box.exit(step[2])
                        elif step[0] == "kill" and handles:
                            n.start_soon(handles[step[1] % len(handles)].kill)
                        elif step[0] == "sleep":
                            await trio.sleep(step[1])
                        await trio.testing.wait_all_tasks_blocked()
                        st_ = sup.statistics()
                        live = [h for h in handles if h.returncode is None]
                        assert st_.live == len(live) <= 4
                        assert st_.exited == len(handles) - len(live)
                        assert st_.starting == 0 and st_.waiting == 0
            assert all(h.returncode is not None for h in handles)

        run(main)
        assert all(b.closed for b in FakeBox.instances)


TestSupervisorMachine = SupervisorMachine.TestCase
TestSupervisorMachine.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)


# -- the warm-start index: options seen before map to their pool without two Specs --


@settings(max_examples=200, deadline=None)
@given(args=argvs(), env=st.one_of(st.none(), envs()), cwd=st.one_of(st.none(), abs_paths()),
       hostname=st.one_of(st.none(), hostnames()), uid=st.one_of(st.none(), ids()),
       mounts=mount_lists(), network=st.sampled_from(["none", "host"]))
def test_a_run_spec_from_the_pools_key_is_the_spec_make_spec_builds(args, env, cwd, hostname,
                                                                      uid, mounts, network):
    options = {"hostname": hostname, "uid": uid, "mounts": mounts, "network": network}
    spec = nsbox.Spec(args, env=env, cwd=cwd, **options)
    made = _run_spec(_pool_key(spec), args, env, cwd)
    assert made == spec and made._values() == spec._values()
    assert hash(made) == hash(spec)


@settings(max_examples=200, deadline=None)
@given(args=hostile_argvs(), env=hostile_envs())
def test_a_run_spec_validates_args_and_env_as_a_spec_does(args, env):
    key = _pool_key(nsbox.Spec(["x"]))
    try:
        expected = nsbox.Spec(args, env=env)
    except nsbox.SpecError as exc:
        with pytest.raises(nsbox.SpecError) as info:
            _run_spec(key, args, env, None)
        assert str(info.value) == str(exc)
    else:
        assert _run_spec(key, args, env, None) == expected


def test_signatures_tell_apart_what_make_spec_reads_differently():
    same = ({"uid": 1, "namespaces": ("user", "pid")}, {"namespaces": ("user", "pid"), "uid": 1})
    assert _signature(same[0]) == _signature(same[1])
    for a, b in [({"uid": 1}, {"uid": True}), ({"uid": 0}, {"uid": 0.0}),
                 ({"namespaces": ("user",)}, {"namespaces": ["user"]}),
                 ({"namespaces": ("user", "pid")}, {"namespaces": ("pid", "user")}),
                 ({"mounts": [nsbox.Tmpfs("/a")]}, {"mounts": [nsbox.Tmpfs("/a", size="1M")]}),
                 ({"hostname": "a"}, {})]:
        assert _signature(a) != _signature(b), (a, b)
    for odd in ({"limits": {"memory": "1G"}}, {"mounts": [object()]}):
        with pytest.raises(TypeError):  # not known to compare safely: the slow way
            _signature(odd)
