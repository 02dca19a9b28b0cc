"""Hypothesis, with real sandboxes: random valid specs run as described and leak nothing."""

from __future__ import annotations

import os
import shutil
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nsbox

REAL = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOSTNAMES = st.lists(LABEL, min_size=1, max_size=3).map(".".join).filter(lambda h: len(h) <= 64)

ENV_NAMES = st.from_regex(r"NSBX_[A-Za-z0-9_]{0,12}", fullmatch=True)
ENV_VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                     max_size=40)
IDS = st.one_of(st.none(), st.integers(0, 70000), st.sampled_from([65534, 2**31, 2**32 - 2]))

TARGETS = ["/tmp/h1", "/tmp/h1/h2", "/mnt/nsbx-h1", "/nsbx-h/a", "/nsbx-h/a/b", "/srv/nsbx-h",
           "/etc/nsbx-h"]


@st.composite
def mounts(draw, sources, extra_targets=()):
    targets = draw(st.lists(st.sampled_from([*TARGETS, *extra_targets]), max_size=3,
                            unique=True))
    out = []
    for dst in targets:
        if draw(st.booleans()):
            size = draw(st.one_of(st.none(), st.sampled_from(["1M", "64k", 4 << 20])))
            out.append(nsbox.Tmpfs(dst, size=size))
        else:
            src = draw(st.sampled_from(sources))
            out.append(nsbox.Bind(src, dst, readonly=draw(st.booleans())))
    return out


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin")
    assert path, name
    return path


def _children() -> set[int]:
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            kids.update(int(p) for p in f.read().split())
    return kids


def _snapshot(dirs) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(d)) for d in dirs}


def test_random_specs_run_and_leak_nothing(tmp_path):
    sources = []
    for name in ("s1", "s2"):
        d = tmp_path / name
        d.mkdir()
        (d / "file").write_text(name)
        sources.append(str(d))
    tmp_path.chmod(0o755)
    watched = [*sources, str(tmp_path), "/", "/mnt", "/srv", "/etc"]
    # Targets under tmp_path too: inside the private /tmp, or mirrored when tmp_path is
    # elsewhere; on the host they must never appear.
    extra_targets = [str(tmp_path / "tgt"), str(tmp_path / "tgt" / "sub"), str(tmp_path / "s1")]
    host_name = socket.gethostname()
    hostname_bin, id_bin, env_bin = _tool("hostname"), _tool("id"), _tool("env")

    @REAL
    @given(
        hostname=st.one_of(st.none(), HOSTNAMES),
        env=st.one_of(st.none(), st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=5)),
        uid=IDS,
        gid=IDS,
        mount_list=mounts(sources, extra_targets),
        network=st.sampled_from(["none", "host"]),
    )
    def check(hostname, env, uid, gid, mount_list, network):
        before = _snapshot(watched)
        fds = len(os.listdir("/proc/self/fd"))
        kids = _children()
        tests = "".join(f"test -d {m.dst} || echo missing {m.dst} >&2; " for m in mount_list)
        script = (f"{hostname_bin}; {id_bin} -u; {id_bin} -g; {tests}"
                  f"printf '\\0'; {env_bin} -0")
        r = nsbox.run(["/bin/sh", "-c", script], hostname=hostname, env=env, uid=uid, gid=gid,
                      mounts=mount_list, network=network, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stderr == b""
        head, _, env_out = r.stdout.partition(b"\0")
        name, got_uid, got_gid = head.decode().split("\n")[:3]
        assert name == (hostname or host_name)
        assert int(got_uid) == (uid or 0)
        assert int(got_gid) == (gid or 0)
        if env is not None:
            got_env = dict(item.split("=", 1) for item in os.fsdecode(env_out).split("\0")
                           if item)
            got_env.pop("PWD", None)  # the shell exports its working directory
            assert got_env == env
        # Nothing created on the host, nothing left running, no fd kept.
        assert _snapshot(watched) == before
        assert _children() == kids
        assert len(os.listdir("/proc/self/fd")) == fds

    check()


NO_NUL = st.binary(max_size=64).filter(lambda b: b"\0" not in b)


@REAL
@given(args=st.lists(NO_NUL, max_size=30))
def test_random_bytes_arguments_roundtrip(args):
    r = nsbox.run(["printf", "%s\\0", *args], capture_output=True, timeout=60)
    assert r.returncode == 0
    got = r.stdout.split(b"\0")[:-1]
    assert got == (args or [b""])


@REAL
@given(data=st.binary(max_size=200000))
def test_random_stdin_roundtrip(data):
    r = nsbox.run(["cat"], input=data, capture_output=True, timeout=60)
    assert r.stdout == data
