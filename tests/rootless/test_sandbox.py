"""nsbox.Sandbox: a Popen-like handle on a running sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import warnings

import pytest

import nsbox

READY_TRAP = "trap 'exit {code}' {sig}; echo ready; sleep {sleep} & wait"


def trap_script(sig: str, code: int, sleep: str) -> list[str]:
    """A shell that prints `ready` once its trap is set, then exits `code` on `sig`."""
    return ["sh", "-c", READY_TRAP.format(code=code, sig=sig, sleep=sleep)]


def wait_ready(box: nsbox.Sandbox) -> None:
    assert box.stdout.readline() in (b"ready\n", "ready\n")



def _in_threads(worker, count: int) -> None:
    """Run worker(0..count-1) in as many threads at once and wait for them all."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)

def test_poll_and_wait():
    with nsbox.Sandbox(["sh", "-c", "read x; exit 3"], stdin=nsbox.PIPE) as box:
        assert box.poll() is None
        assert box.returncode is None
        box.stdin.write(b"go\n")
        box.stdin.close()
        assert box.wait(timeout=20) == 3
        assert box.returncode == 3
        assert box.poll() == 3
        assert box.wait() == 3


def test_wait_timeout_raises_and_sandbox_keeps_running(sleep_marker):
    with nsbox.Sandbox(["sleep", sleep_marker]) as box:
        t0 = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired) as info:
            box.wait(timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 5
        assert info.value.timeout == 0.3
        assert box.poll() is None
        box.kill()
        assert box.wait(timeout=10) == -signal.SIGKILL


def test_wait_timeout_zero(sleep_marker):
    with nsbox.Sandbox(["sleep", sleep_marker]) as box, pytest.raises(subprocess.TimeoutExpired):
        box.wait(timeout=0)


def test_communicate_input_and_output():
    with nsbox.Sandbox(["sh", "-c", "cat; echo err >&2"], stdin=nsbox.PIPE, stdout=nsbox.PIPE,
                       stderr=nsbox.PIPE) as box:
        out, err = box.communicate(b"hello\n", timeout=20)
    assert out == b"hello\n"
    assert err == b"err\n"
    assert box.returncode == 0


def test_communicate_text():
    with nsbox.Sandbox(["cat"], stdin=nsbox.PIPE, stdout=nsbox.PIPE, text=True) as box:
        out, err = box.communicate("h\u00e9\n")
    assert out == "h\u00e9\n"
    assert err is None


def test_line_buffered_text_streams_do_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nsbox.Sandbox(["cat"], stdin=nsbox.PIPE, stdout=nsbox.PIPE, text=True,
                           bufsize=1) as box:
            out, _ = box.communicate("x\n", timeout=20)
    assert out == "x\n"
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_communicate_timeout_then_retry(sleep_marker):
    with nsbox.Sandbox(["sh", "-c", f"echo partial; sleep {sleep_marker}"],
                       stdout=nsbox.PIPE) as box:
        with pytest.raises(subprocess.TimeoutExpired):
            box.communicate(timeout=0.5)
        box.kill()
        out, _ = box.communicate(timeout=20)
    assert out == b"partial\n"
    assert box.returncode == -signal.SIGKILL


def test_communicate_without_pipes():
    with nsbox.Sandbox(["true"]) as box:
        assert box.communicate(timeout=20) == (None, None)
        assert box.returncode == 0


def test_streams_like_popen():
    with nsbox.Sandbox(["sh", "-c", "while read l; do echo \"got $l\"; done"],
                       stdin=nsbox.PIPE, stdout=nsbox.PIPE, text=True) as box:
        box.stdin.write("one\n")
        box.stdin.flush()
        assert box.stdout.readline() == "got one\n"
        box.stdin.write("two\n")
        box.stdin.flush()
        assert box.stdout.readline() == "got two\n"
        box.stdin.close()
        assert box.wait(timeout=20) == 0
        assert box.stdout.read() == ""


@pytest.mark.parametrize(("signame", "code"), [("TERM", 7), ("INT", 8), ("HUP", 9),
                                               ("USR1", 10), ("USR2", 11), ("QUIT", 12)])
def test_send_signal_is_forwarded_to_command(signame, code, sleep_marker):
    with nsbox.Sandbox(trap_script(signame, code, sleep_marker), stdout=nsbox.PIPE) as box:
        wait_ready(box)
        box.send_signal(getattr(signal, f"SIG{signame}"))
        assert box.wait(timeout=20) == code


def test_terminate_reaches_trap(sleep_marker):
    with nsbox.Sandbox(trap_script("TERM", 7, sleep_marker), stdout=nsbox.PIPE) as box:
        wait_ready(box)
        box.terminate()
        assert box.wait(timeout=20) == 7


def test_terminate_default_action_is_signal_death(sleep_marker):
    with nsbox.Sandbox(["sleep", sleep_marker]) as box:
        time.sleep(0.1)
        box.terminate()
        assert box.wait(timeout=20) == -signal.SIGTERM


def test_kill(procs, marker, sleep_marker):
    with nsbox.Sandbox(["sh", "-c", f"trap '' TERM; sleep {sleep_marker} & wait", marker]) as box:
        assert procs.wait_present(sleep_marker)
        box.kill()
        assert box.wait(timeout=20) == -signal.SIGKILL
    assert procs.marked(marker, sleep_marker) == []


def test_signals_after_exit_are_ignored():
    with nsbox.Sandbox(["true"]) as box:
        box.wait(timeout=20)
        box.send_signal(signal.SIGTERM)
        box.terminate()
        box.kill()
        assert box.returncode == 0


def test_context_manager_kills_and_reaps(procs, marker, sleep_marker):
    with nsbox.Sandbox(["sh", "-c", f"sleep {sleep_marker} & sleep {sleep_marker}; :",
                        marker]) as box:
        pid = box.pid
        assert procs.wait_present(sleep_marker, count=2)
        tree = procs.tree(pid)
        assert len(tree) >= 4  # init, sh, two sleeps
    assert box.returncode == -signal.SIGKILL
    assert box.pidfd == -1
    assert procs.alive(tree) == set()  # reaped: not even a zombie
    assert procs.marked(marker, sleep_marker) == []


def test_context_manager_on_exception(procs, sleep_marker):
    with pytest.raises(RuntimeError), nsbox.Sandbox(["sleep", sleep_marker]) as box:
        raise RuntimeError("boom")
    assert box.returncode == -signal.SIGKILL
    assert procs.marked(sleep_marker) == []


def test_close_closes_streams():
    box = nsbox.Sandbox(["cat"], stdin=nsbox.PIPE, stdout=nsbox.PIPE)
    box.close()
    assert box.stdin.closed and box.stdout.closed
    assert box.returncode is not None


def test_pid_and_pidfd(sleep_marker):
    with nsbox.Sandbox(["sleep", sleep_marker]) as box:
        assert isinstance(box.pid, int) and box.pid > 0
        assert box.pid != os.getpid()
        # pid is the host pid of the sandbox's init, our child.
        with open(f"/proc/{box.pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid == os.getpid()
        fd = box.pidfd
        assert fd >= 0
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        with open(f"/proc/self/fdinfo/{fd}") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        assert int(info["Pid"]) == box.pid
        box.kill()
        box.wait(timeout=20)
    assert box.pidfd == -1


def test_sandbox_repr_and_args():
    args = ["echo", "x"]
    with nsbox.Sandbox(args, stdout=nsbox.DEVNULL) as box:
        box.wait(timeout=20)
    assert list(box.args) == args
    assert "nsbox.Sandbox" in repr(box)


def test_wait_in_one_thread_terminate_from_another(sleep_marker):
    """Popen allows this: wait() blocks in one thread while another sends SIGTERM."""
    box = nsbox.Sandbox(trap_script("TERM", 7, sleep_marker), stdout=nsbox.PIPE)
    try:
        wait_ready(box)
        result: list[int] = []
        waiter = threading.Thread(target=lambda: result.append(box.wait()))
        waiter.start()
        time.sleep(0.2)  # the waiter is blocked in wait()
        sender = threading.Thread(target=box.terminate, daemon=True)
        sender.start()
        sender.join(3)
        stuck = sender.is_alive()
        if stuck:  # unblock everything before failing
            os.kill(box.pid, signal.SIGKILL)
        waiter.join(20)
        sender.join(20)
        assert not stuck, "terminate() blocked while another thread was in wait()"
        assert result == [7]
    finally:
        box.close()


class _Deadlock(Exception):
    pass


def test_send_signal_from_signal_handler_during_wait(sleep_marker):
    """A Python signal handler that forwards to the sandbox while wait() blocks (as the CLI
    does) must not deadlock."""
    box = nsbox.Sandbox(trap_script("TERM", 7, sleep_marker), stdout=nsbox.PIPE)

    def escape(*_):
        raise _Deadlock

    def watchdog():
        # Still stuck: kill the sandbox, then break the main thread out of the handler.
        os.kill(box.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = {
        signal.SIGUSR1: signal.signal(signal.SIGUSR1, lambda *_: box.terminate()),
        signal.SIGUSR2: signal.signal(signal.SIGUSR2, escape),
    }
    trigger = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    dog = threading.Timer(3, watchdog)
    code = None
    try:
        wait_ready(box)
        trigger.start()
        dog.start()
        try:
            code = box.wait()
        except _Deadlock:
            code = "deadlock"
        dog.cancel()
        dog.join()
    finally:
        trigger.cancel()
        dog.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            box.close()
        except _Deadlock:  # pragma: no cover - the watchdog fired late
            pass
    assert code == 7


# -- threads ---------------------------------------------------------------------------


def test_run_from_many_threads():
    errors: list[BaseException] = []
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(12):
                token = f"t{n}-{i}"
                r = nsbox.run(["sh", "-c", 'echo "$0"; hostname', token],
                              hostname=f"h{n}-{i}", capture_output=True, text=True, timeout=60)
                with lock:
                    results.append((r.stdout, f"{token}\nh{n}-{i}\n"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    _in_threads(worker, 8)
    assert not errors, errors
    assert len(results) == 8 * 12
    for got, want in results:
        assert got == want


def test_sandboxes_from_many_threads_with_pipes():
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(6):
                data = f"{n}:{i}\n".encode() * 1000
                with nsbox.Sandbox(["cat"], stdin=nsbox.PIPE, stdout=nsbox.PIPE) as box:
                    out, _ = box.communicate(data, timeout=60)
                assert out == data
                assert box.returncode == 0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    _in_threads(worker, 8)
    assert not errors, errors


def test_many_concurrent_running_sandboxes(procs, sleep_marker):
    boxes = [nsbox.Sandbox(["sleep", sleep_marker]) for _ in range(16)]
    try:
        assert len({b.pid for b in boxes}) == 16
        assert all(b.poll() is None for b in boxes)
    finally:
        for b in boxes:
            b.close()
    assert all(b.returncode == -signal.SIGKILL for b in boxes)
    assert procs.marked(sleep_marker) == []


def test_a_forked_child_leaves_the_parents_sandbox_alone():
    # Its copy dropped (exit, gc) must not kill the parent's sandbox, nor may
    # its wait() take the parent's exit record.
    box = nsbox.Sandbox(["sh", "-c", "sleep 0.5; kill -USR2 $$"])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0 if box.poll() is None and box.wait() is None else 1
        del box
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert box.wait() == -signal.SIGUSR2 and box.reason == "signaled"
    box.close()

