"""Limits: validation, conversion, the rlimits the plan asks init for, and
how the termination reason is decided (all pure)."""

from __future__ import annotations

import os
import resource
import signal

import pytest
from hypothesis import given
from nsbox_strategies import each_raises, limits

import nsbox
from nsbox._cli import parse_run, spec_to_argv
from nsbox._plan import make_plan, rlimits_for
from nsbox._spec import Limits, format_size
from nsbox._stats import Stats, reason_for

CPUS = os.cpu_count() or 1


def test_sizes_and_units():
    lim = Limits(memory="256M", memory_swap="1G", fsize="1k", core=0)
    assert (lim.memory, lim.memory_swap, lim.fsize, lim.core) == (256 << 20, 1 << 30, 1024, 0)
    assert Limits(memory=64 << 20, memory_swap=-1).memory_swap == -1
    assert Limits(memory="64M", memory_swap="-1").memory_swap == -1
    assert Limits(fsize="0").fsize == 0


def test_cpu_time_rounds_up_to_whole_seconds():
    assert Limits(cpu_time=0.2).cpu_time == 1
    assert Limits(cpu_time=2).cpu_time == 2
    assert Limits(cpu_time="1.5").cpu_time == 2


def test_bad_values_are_spec_errors():
    cases = [
        {"memory": -1}, {"memory": 0}, {"memory": "12Q"}, {"memory": "1k"}, {"memory": True},
        {"memory_swap": "1G"},  # without memory
        {"memory": "1G", "memory_swap": "512M"},  # less than memory
        {"pids": 0}, {"pids": -3}, {"pids": 1.5}, {"pids": "many"},
        {"cpus": 0}, {"cpus": -1}, {"cpus": CPUS + 1}, {"cpus": float("nan")}, {"cpus": "x"},
        {"cpus": 0.001},
        {"cpu_time": 0}, {"cpu_time": -2}, {"cpu_time": float("inf")},
        {"nofile": 0}, {"nofile": 2**31}, {"fsize": -1}, {"core": "lots"},
        {"cgroup_parent": "relative"}, {"cgroup_parent": "/a/../b"},
    ]
    each_raises(nsbox.SpecError, cases, lambda kw: Limits(**kw))
    # ...also through a Spec, and as a mapping with an unknown key.
    each_raises(nsbox.SpecError, [{"pids": 0}, {"bogus": 1}, "256M", 5],
                lambda lim: nsbox.Spec(["true"], limits=lim))


def test_pids_must_leave_room_for_init():
    with pytest.raises(nsbox.SpecError, match="init"):
        nsbox.Spec(["true"], limits={"pids": 1})
    # Without a pid namespace too: nsbox-init runs in the cgroup all the same.
    with pytest.raises(nsbox.SpecError, match="pids=1"):
        nsbox.Spec(["true"], namespaces=["user"], limits={"pids": 1})
    assert nsbox.Spec(["true"], namespaces=["user"], limits={"pids": 2}).limits.pids == 2


def test_empty_limits_are_no_limits():
    assert nsbox.Spec(["true"], limits=Limits()).limits is None
    assert nsbox.Spec(["true"], limits={}).limits is None


def test_controllers_and_needs_cgroup():
    assert Limits(nofile=10, cpu_time=3).controllers == frozenset()
    assert not Limits(nofile=10).needs_cgroup
    assert Limits(memory="8M", pids=4, cpus=0.5).controllers == {"memory", "pids", "cpu"}
    assert Limits(cgroup_parent="/ci").needs_cgroup


def test_rlimits_for_init():
    lim = Limits(cpu_time=3, nofile=16, fsize="1M", core=0, memory="64M")
    assert rlimits_for(lim) == (
        (resource.RLIMIT_CPU, 3, 4),  # SIGXCPU at 3 s, SIGKILL at 4 s
        (resource.RLIMIT_NOFILE, 16, 16),
        (resource.RLIMIT_FSIZE, 1 << 20, 1 << 20),
        (resource.RLIMIT_CORE, 0, 0),
    )
    assert rlimits_for(None) == () and rlimits_for(Limits(memory="64M")) == ()
    plan = make_plan(nsbox.Spec(["true"], limits=lim), caller_uid=1, caller_gid=1,
                     caller_cwd="/", environ={})
    assert plan.rlimits == rlimits_for(lim) and plan.limits == lim


def test_format_size():
    assert [format_size(n) for n in (256 << 20, 1 << 30, 1536, 1000, 3 << 40)] == [
        "256M", "1G", "1536", "1000", "3T"]


@given(limits())
def test_cli_round_trip(lim):
    spec = nsbox.Spec(["true"], limits=lim)
    assert parse_run(spec_to_argv(spec))[0] == spec


def test_cli_flags():
    spec = parse_run(["--memory", "50M", "--memory-swap=-1", "--pids", "20", "--cpus", "0.25",
                      "--cpu-time", "1", "--nofile", "16", "--fsize", "1M", "--core=0",
                      "--", "true"])[0]
    assert spec.limits == Limits(memory="50M", memory_swap=-1, pids=20, cpus=0.25, cpu_time=1,
                                 nofile=16, fsize="1M", core=0)


# -- the reason --------------------------------------------------------------------------


def stats(cpu: float = 0.0, oom: int | None = None) -> Stats:
    return Stats(wall_time=1.0, user_time=cpu, system_time=0.0, oom_kills=oom)


def test_reason_plain_exits():
    assert reason_for(0, stats(), None, None) == "exited"
    assert reason_for(3, stats(), None, None) == "exited"
    assert reason_for(-signal.SIGSEGV, stats(), None, None) == "signaled"


def test_reason_caller_first():
    assert reason_for(-signal.SIGKILL, stats(oom=1), None, "timeout") == "timeout"
    assert reason_for(-signal.SIGTERM, stats(), None, "killed") == "killed"
    # The command caught the caller's SIGTERM and exited on its own: not "killed".
    assert reason_for(0, stats(), None, "killed") == "exited"


def test_reason_oom_needs_a_failure():
    assert reason_for(-signal.SIGKILL, stats(oom=1), Limits(memory="8M"), None) == "oom"
    assert reason_for(137, stats(oom=2), Limits(memory="8M"), None) == "oom"  # via a shell
    # A child was OOM-killed but the command recovered and succeeded.
    assert reason_for(0, stats(oom=1), Limits(memory="8M"), None) == "exited"


def test_reason_cpu_time():
    lim = Limits(cpu_time=2)
    assert reason_for(-signal.SIGXCPU, stats(2.0), lim, None) == "cpu_time"
    assert reason_for(-signal.SIGKILL, stats(3.1), lim, None) == "cpu_time"
    assert reason_for(128 + signal.SIGXCPU, stats(2.0), lim, None) == "cpu_time"
    # SIGKILL before the hard limit (one second past) is someone else's doing,
    # even with processes that used more than the limit between them.
    assert reason_for(-signal.SIGKILL, stats(0.1), lim, None) == "signaled"
    assert reason_for(-signal.SIGKILL, stats(2.6), lim, None) == "signaled"
    assert reason_for(-signal.SIGXCPU, stats(2.0), None, None) == "signaled"


@pytest.mark.parametrize("kw", [{"cpus": 10**400}, {"cpu_time": 10**400}, {"pids": "\u00b2"},
                                {"nofile": "9" * 5000}, {"memory": "9" * 5000},
                                {"cpus": "1e400"}])
def test_hostile_numbers_are_spec_errors_that_stay_short(kw):
    with pytest.raises(nsbox.SpecError) as info:
        Limits(**kw)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("publish", ["\u00b2:80", "9" * 5000 + ":80", "80:\u00b2"])
def test_hostile_publish_values_are_spec_errors(publish):
    with pytest.raises(nsbox.SpecError):
        nsbox.Spec(["true"], network="ci", publish=publish)


@pytest.mark.parametrize("port", [0, 70000, -1, True, "80", 1.5])
def test_connect_ports_are_checked(port):
    from nsbox._spec import check_port

    with pytest.raises(nsbox.SpecError):
        check_port(port)

