"""The router's environment logic with a fake supervisor (no sandbox)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import nsbox
from nsbox._serve import EnvFailed, Full, Router
from nsbox._serve_config import parse_config

CONFIG = parse_config({"serve": {"max_envs": 2, "ready_timeout": 5},
                       "template": {"command": ["srv"], "port": 80}})


class FakeSup:
    """start() raises what it is told to; counts calls."""

    def __init__(self, exc: BaseException):
        self.exc = exc
        self.starts = 0

    async def start(self, spec, **kw):
        self.starts += 1
        await trio.sleep(0.01)
        raise self.exc


def run_router(sup, body):
    async def main():
        async with trio.open_nursery() as nursery:
            router = Router(CONFIG, sup, nursery, token=None)
            await body(router)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_machine_limits_are_a_503_not_a_hang():
    sup = FakeSup(nsbox.CapacityError("nsbox: the supervisor is full", "RLIMIT_NOFILE", 3))

    async def body(router):
        with pytest.raises(Full, match="cannot start now: nsbox: the supervisor is full"):
            await router.get_env("a")
        assert router.envs == {}  # forgotten: the next request tries again

    run_router(sup, body)


def test_concurrent_first_requests_share_one_start_and_its_failure():
    sup = FakeSup(nsbox.SandboxSetupError(2, "nsbox: setup failed at exec: srv: No such file",
                                          stage="exec"))
    errors = []

    async def body(router):
        async def one():
            try:
                await router.get_env("a")
            except EnvFailed as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as n:
            for _ in range(10):
                n.start_soon(one)
        assert sup.starts == 1 and len(errors) == 10
        assert all("failed to start" in e and "srv" in e for e in errors)

    run_router(sup, body)


def test_max_envs_counts_starting_environments():
    class Slow:
        starts = 0

        async def start(self, spec, **kw):
            self.starts += 1
            await trio.sleep_forever()

    sup = Slow()

    async def body(router):
        async with trio.open_nursery() as n:
            n.start_soon(router.get_env, "a")
            n.start_soon(router.get_env, "b")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Full, match="maximum"):
                await router.get_env("c")
            assert sup.starts == 2
            n.cancel_scope.cancel()

    run_router(sup, body)
