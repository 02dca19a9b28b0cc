"""CLI parsing without running anything: parse_run, spec_to_argv, main's error paths."""

from __future__ import annotations

import os

import nsbox_strategies as S
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nsbox._cli import CliError, main, parse_run, spec_to_argv
from nsbox._spec import Bind, Spec, SpecError, Tmpfs

# -- round trip -----------------------------------------------------------------------


@given(S.specs(cli=True))
@example(Spec(["--", "-x"], env={}))
@example(Spec(["x"], network="host", namespaces=[]))
@example(Spec(["x"], mounts=[Bind("/", "/host", readonly=True), Tmpfs("/t", size="1G", mode=0)]))
def test_spec_argv_round_trip(spec):
    argv = spec_to_argv(spec)
    assert all(isinstance(a, str) for a in argv)
    got, timeout, status_fd = parse_run(argv)
    assert got == spec
    assert (timeout, status_fd) == (None, None)
    assert spec_to_argv(got) == argv


def test_round_trip_argv_shape():
    spec = Spec(["ls", "-l"], hostname="box", uid=1, gid=2, cwd="/w", rootfs="/r",
                mounts=[Bind("/a", "/b"), Bind("/c", readonly=True), Tmpfs("/t", size="1M")],
                env={"A": "1"}, network="host")
    assert spec_to_argv(spec) == [
        "--rootfs=/r", "--bind=/a:/b", "--ro-bind=/c:/c", "--tmpfs=/t:size=1048576",
        "--chdir=/w", "--network=host", "--hostname=box", "--uid=1", "--gid=2",
        "--clearenv", "--env=A=1", "--", "ls", "-l",
    ]


# -- parsing --------------------------------------------------------------------------


def test_defaults():
    spec, timeout, status_fd = parse_run(["--", "true"])
    assert spec == Spec(["true"])
    assert (timeout, status_fd) == (None, None)
    assert parse_run(["true", "-x"])[0].args == ("true", "-x")  # '--' is optional


def test_options():
    spec, timeout, status_fd = parse_run([
        "--tmpfs", "/s:size=64M,mode=1777", "--tmpfs", "/t", "--timeout", "2.5",
        "--status-fd", "7", "--namespaces", "user,mount,net", "--", "sh", "-c", "x",
    ])
    assert spec.mounts == (Tmpfs("/s", size=64 << 20, mode=0o1777), Tmpfs("/t"))
    assert spec.namespaces == frozenset({"user", "mount", "net"})
    assert (timeout, status_fd) == (2.5, 7)
    assert spec.args == ("sh", "-c", "x")
    # Without 'net' among the namespaces the network is the host's.
    assert parse_run(["--namespaces", "user,mount", "--", "x"])[0].network == "host"


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = os.getcwd()
    spec = parse_run(["--bind", "data:/d", "--ro-bind", "ro:/r", "--rootfs", "root", "--", "x"])[0]
    assert spec.mounts == (Bind(f"{base}/data", "/d"), Bind(f"{base}/ro", "/r", readonly=True))
    assert spec.rootfs == f"{base}/root"


def test_fixed_relative_bind_without_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = os.getcwd()
    spec = parse_run(["--bind", "data", "--", "x"])[0]
    assert spec.mounts == (Bind(f"{base}/data"),)


def test_env_options(monkeypatch):
    monkeypatch.setenv("NSBOX_T", "caller")
    monkeypatch.delenv("NSBOX_MISSING", raising=False)
    assert parse_run(["--", "x"])[0].env is None
    env = parse_run(["--env", "A=1=2", "--env", "NSBOX_T", "--", "x"])[0].environ
    assert env["A"] == "1=2" and env["NSBOX_T"] == "caller" and env["PATH"] == os.environ["PATH"]
    env = parse_run(["--clearenv", "--env", "NSBOX_T", "--env", "NSBOX_MISSING", "--env", "B=",
                     "--", "x"])[0].environ
    assert env == {"NSBOX_T": "caller", "B": ""}
    assert parse_run(["--clearenv", "--", "x"])[0].environ == {}


BAD_ARGVS = [
    ([], CliError),
    (["--"], CliError),
    (["--bogus", "--", "x"], CliError),
    (["--uid", "x", "--", "y"], CliError),
    (["--uid", "-1", "--", "y"], SpecError),
    (["--uid", str(2**32), "--", "y"], SpecError),
    (["--gid", "1.5", "--", "y"], CliError),
    (["--network", "Bogus", "--", "x"], SpecError),
    (["--network", "../x", "--", "x"], SpecError),
    (["--name", "db", "--", "x"], SpecError),
    (["--network", "ci", "--name", "A_b", "--", "x"], SpecError),
    (["--network", "ci", "--publish", "80", "--", "x"], SpecError),
    (["--network", "ci", "--publish", "0:70000", "--", "x"], SpecError),
    (["--network", "host", "--namespaces", "user,net", "--", "x"], SpecError),
    (["--namespaces", "bogus", "--", "x"], SpecError),
    (["--hostname", "bad_name", "--", "x"], SpecError),
    (["--hostname", "a" * 65, "--", "x"], SpecError),
    (["--tmpfs", "/x:size=12Q", "--", "y"], SpecError),
    (["--tmpfs", "/x:size=0", "--", "y"], SpecError),
    (["--tmpfs", "/x:foo=1", "--", "y"], CliError),
    (["--tmpfs", "/x:mode=9", "--", "y"], CliError),
    (["--tmpfs", "rel", "--", "y"], SpecError),
    (["--tmpfs", "/", "--", "y"], SpecError),
    (["--bind", ":/x", "--", "y"], CliError),
    (["--bind", "/a:rel", "--", "y"], SpecError),
    (["--ro-bind", "/a:/", "--", "y"], SpecError),
    (["--bind", "/a:/x", "--tmpfs", "/x", "--", "y"], SpecError),
    (["--chdir", "rel", "--", "x"], SpecError),
    (["--chdir", "/a/../b", "--", "x"], SpecError),
    (["--env", "=x", "--", "y"], CliError),
    (["--env", "A=\0", "--", "y"], SpecError),
    (["--timeout", "0", "--", "x"], CliError),
    (["--timeout", "-1", "--", "x"], CliError),
    (["--timeout", "nan", "--", "x"], CliError),
    (["--timeout", "inf", "--", "x"], CliError),
    (["--timeout", "soon", "--", "x"], CliError),
    (["--status-fd", "x", "--", "y"], CliError),
    (["--rootfs"], CliError),
    (["--", ""], SpecError),
    (["--", "a\0b"], SpecError),
]


def test_bad_options():
    for exc in (CliError, SpecError):
        S.each_raises(exc, [argv for argv, e in BAD_ARGVS if e is exc], parse_run)


def _nsbox_line(capsys) -> str:
    """The one line main() wrote: on stderr, prefixed, no traceback, nothing on stdout."""
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nsbox: "), err
    return lines[0]


def test_main_bad_options_exit_125(capsys):
    wrong = []
    for argv, _ in BAD_ARGVS:
        code = main(["run", *argv])
        try:
            _nsbox_line(capsys)
        except AssertionError as exc:
            wrong.append((argv, code, str(exc)))
            continue
        if code != 125:
            wrong.append((argv, code))
    assert not wrong


def test_main_messages_name_the_value(capsys):
    assert main(["run", "--hostname", "bad_name", "--", "x"]) == 125
    assert "bad_name" in _nsbox_line(capsys)
    assert main(["run", "--tmpfs", "/x:size=12Q", "--", "x"]) == 125
    assert "12Q" in _nsbox_line(capsys)
    assert main(["run", "--chdir", "work", "--", "x"]) == 125
    assert "work" in _nsbox_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["--rootfs", ""], "rootfs"),  # not "no rootfs": that would be the host's root
    (["--rootfs="], "rootfs"),
    (["--status-fd", "99999999999"], "99999999999"),
    (["--pids", "\u00b2"], "pids"),  # a digit to str.isdigit, not to int()
    (["--nofile", "9" * 5000], "nofile"),
    (["--cpus", str(10**400)], "cpus"),
    (["--network", "nsbxq", "--publish", "\u00b2:80"], "port"),
])
def test_main_hostile_values_are_one_line_not_an_internal_error(capsys, argv, words):
    assert main(["run", *argv, "--", "true"]) == 125
    line = _nsbox_line(capsys)
    assert words in line and "internal error" not in line and len(line) < 300


def test_main_closed_status_fd_is_125_before_any_sandbox(capsys):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert main(["run", "--status-fd", str(w), "--", "/bin/true"]) == 125
    assert str(w) in _nsbox_line(capsys)


def test_main_usage_errors(capsys):
    for argv in (["bogus"], ["--bogus"], ["run"], ["run", "--"], ["-x", "run"]):
        assert main(argv) == 125, argv
        _nsbox_line(capsys)


def test_main_without_arguments(capsys):
    assert main([]) == 125
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("nsbox: ")] != []
    assert len([line for line in err.splitlines() if line.startswith("nsbox: ")]) == 1


def test_main_help(capsys):
    for argv in (["--help"], ["-h"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert "run" in out and err == ""


def test_main_run_help_explains_each_option(capsys):
    assert main(["run", "--help"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for option in ("--rootfs", "--bind", "--ro-bind", "--tmpfs", "--network", "--hostname",
                   "--env", "--clearenv", "--chdir", "--uid", "--gid", "--timeout",
                   "--status-fd"):
        assert option in out, option
    for code in ("124", "125", "126", "127", "128+N"):
        assert code in out, code


# -- fuzz -------------------------------------------------------------------------------

TOKENS = st.one_of(
    st.sampled_from([
        "--rootfs", "--bind", "--ro-bind", "--tmpfs", "--network", "--hostname", "--env",
        "--clearenv", "--chdir", "--uid", "--gid", "--timeout", "--status-fd", "--namespaces",
        "--", "-", "-x", "--bind=/a", "--uid=1", "/a", "/a:/b", "a:b", ":", "/t:size=1M",
        "/t:mode=7", "host", "none", "box", "A=1", "=", "1", "-1", "0", "nan", "user,net", "",
    ]),
    S.safe_text(max_size=6),
)


@given(st.lists(TOKENS, max_size=8))
def test_parse_run_never_raises_anything_else(argv):
    try:
        spec, timeout, status_fd = parse_run(argv)
    except (CliError, SpecError) as exc:
        assert str(exc)
        return
    assert isinstance(spec, Spec)
    assert timeout is None or timeout > 0
    assert status_fd is None or isinstance(status_fd, int)


# -- known bugs -------------------------------------------------------------------------


def test_fixed_round_trip_keeps_mount_order():
    spec = Spec(["x"], mounts=[Tmpfs("/a"), Bind("/b")])
    assert parse_run(spec_to_argv(spec))[0] == spec


def test_fixed_round_trip_env_name_starting_with_dash():
    spec = Spec(["x"], env={"-X": "1"})
    assert parse_run(spec_to_argv(spec))[0] == spec


@pytest.mark.parametrize("spec", [
    Spec(["x"], mounts=[Bind("/a:b", "/c")]),
    Spec(["x"], mounts=[Tmpfs("/a:b")]),
], ids=["bind-src", "tmpfs-dst"])
def test_fixed_round_trip_colon_in_paths(spec):
    try:
        got = parse_run(spec_to_argv(spec))[0]
    except (CliError, SpecError):
        got = None
    assert got == spec


def test_bench_usage_errors_are_one_line_and_125(capsys):
    from nsbox._cli import main

    assert main(["bench", "no-such-part"]) == 125
    err = capsys.readouterr().err
    assert err.startswith("nsbox: bench: ") and err.count("\n") == 1
    assert main(["bench", "--help"]) == 0
    assert "latency" in capsys.readouterr().out
