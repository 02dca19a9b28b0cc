"""Spec, Bind, Tmpfs and parse_size: every input builds a value or raises SpecError."""

from __future__ import annotations

import os
import pathlib

import nsbox_strategies as S
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nsbox import NsboxError, SpecError
from nsbox._spec import (
    MAX_ID,
    NAMESPACES,
    SPEC_FIELDS,
    SPEC_OPTIONS,
    Bind,
    FrozenInstanceError,
    Network,
    Publish,
    Spec,
    Tmpfs,
    check_hostname,
    check_id,
    check_path,
    make_spec,
    parse_size,
)


def build(fn, *args, **kwargs):
    """fn(...) or None when it raised SpecError; any other exception propagates."""
    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        assert isinstance(exc, ValueError) and isinstance(exc, NsboxError)
        assert str(exc), "a SpecError must say what is wrong"
        return None


# -- the central property -----------------------------------------------------------


@given(S.hostile_argvs(), S.anything_kwargs())
def test_any_input_builds_a_spec_or_raises_spec_error(args, kwargs):
    spec = build(make_spec, args, **kwargs)
    if spec is not None:
        assert isinstance(spec, Spec)
        hash(spec)
        # A valid spec is a fixed point: validating it again changes nothing.
        assert Spec(**{name: getattr(spec, name) for name in SPEC_FIELDS}) == spec


@given(S.hostile_argvs(), S.anything_kwargs())
def test_make_spec_remembers_only_what_validation_would_repeat(args, kwargs):
    """make_spec's memo gives a repeated call the Spec it built before: the same
    result as building it again (or the same error), and never one of an input
    that merely compares equal (1 and True, a list and a tuple)."""
    fresh = build(Spec, args, **kwargs)
    first = build(make_spec, args, **kwargs)
    again = build(make_spec, args, **kwargs)
    assert first == fresh and again == fresh
    if first is not None:
        assert type(first.args) is tuple


def test_make_spec_memo_tells_types_apart():
    assert make_spec(["true"], uid=1) is make_spec(["true"], uid=1)
    with pytest.raises(SpecError):
        make_spec(["true"], uid=True)  # not served from uid=1's entry
    assert make_spec(["true"], uid=1) is make_spec(["true"], uid=1)
    assert make_spec(["1"]).args == make_spec(("1",)).args == ("1",)
    env = {"A": "1"}
    assert make_spec(["x"], env=env) == make_spec(["x"], env=dict(env))  # dicts: not memoized


@given(S.argvs(), S.anything_kwargs(), st.sampled_from(["bogus", "timeout", "stdin", "arg"]))
def test_unknown_option_names_are_a_type_error(args, kwargs, name):
    with pytest.raises(TypeError, match=name):
        make_spec(args, **kwargs, **{name: 1})


@given(S.specs())
def test_valid_specs_are_normalized_and_frozen(spec):
    assert isinstance(spec.args, tuple) and spec.args[0]
    assert isinstance(spec.namespaces, frozenset) and spec.namespaces <= set(NAMESPACES)
    assert isinstance(spec.mounts, tuple)
    assert spec.env is None or isinstance(spec.env, tuple)
    assert list(spec.pass_fds) == sorted(set(spec.pass_fds)) and all(fd > 2 for fd in spec.pass_fds)
    assert ("net" in spec.namespaces) == (spec.network != "host")  # none, or a network
    assert make_spec(spec) is spec
    assert hash(spec) == hash(Spec(**{name: getattr(spec, name)
                                      for name in SPEC_FIELDS}))
    with pytest.raises(FrozenInstanceError):
        spec.args = ("x",)


# -- paths --------------------------------------------------------------------------


@given(S.hostile_paths())
@example("/" + "a" * 4094)  # 4095 bytes: the longest accepted
@example("/" + "a" * 4095)  # 4096 bytes
@example("/" + "é" * 2048)  # 4097 bytes in 2049 characters
@example(b"/\xff/x")
@example(pathlib.PurePosixPath("/srv/data"))
def test_paths_match_the_oracle(value):
    expected = S.path_oracle(value if not isinstance(value, os.PathLike) else os.fspath(value))
    got = build(check_path, value, "cwd")
    assert got == expected
    if got is not None:
        assert check_path(got, "cwd") == got  # idempotent


@given(S.raw_abs_paths())
def test_unnormalized_paths_are_normalized(raw):
    got = check_path(raw, "rootfs")
    assert got.startswith("/") and "//" not in got and (got == "/" or not got.endswith("/"))
    assert "/./" not in got + "/"


BAD_PATHS = ["relative", "./x", "", "/a/../b", "/..", "/a\0b", "/" + "x" * 5000, 5, True, b"rel"]


def test_bad_paths_are_spec_errors():
    for field in ("cwd", "rootfs"):
        S.each_raises(SpecError, BAD_PATHS, lambda bad, f=field: Spec(["true"], **{f: bad}))
    S.each_raises(SpecError, BAD_PATHS, lambda bad: Bind(bad, "/x"))
    S.each_raises(SpecError, BAD_PATHS, lambda bad: Bind("/x", bad))
    S.each_raises(SpecError, BAD_PATHS, lambda bad: Tmpfs(bad))


def test_relative_cwd_names_the_value():
    with pytest.raises(SpecError, match="cwd.*absolute.*'work'"):
        Spec(["true"], cwd="work")


def test_paths_accept_bytes_and_pathlike():
    spec = Spec(["true"], cwd=pathlib.Path("/srv//data/"), rootfs=b"/r\xff")
    assert spec.cwd == "/srv/data"
    assert spec.rootfs == os.fsdecode(b"/r\xff")


# -- hostnames ----------------------------------------------------------------------


@given(S.hostile_hostnames())
def test_hostnames_match_the_oracle(value):
    got = build(check_hostname, value)
    assert (got is not None) == S.hostname_oracle(value)
    if got is not None:
        assert got == value


@given(S.hostnames())
def test_valid_hostnames_build(name):
    assert Spec(["true"], hostname=name).hostname == name


def test_hostname_of_64_bytes_is_accepted_65_is_not():
    name64 = "a" * 32 + "." + "b" * 31
    name65 = "a" * 32 + "." + "b" * 32
    assert len(name64) == 64 and len(name65) == 65
    assert Spec(["true"], hostname=name64).hostname == name64
    with pytest.raises(SpecError, match="64 bytes"):
        Spec(["true"], hostname=name65)


def test_bad_hostnames():
    bad = ["", "-a", "a-", "a..b", "a.", ".a", "a_b", "a b", "é", "a\n", "a" * 64, 5, b"ab",
           ["a"]]
    S.each_raises(SpecError, bad, lambda h: Spec(["true"], hostname=h))


def test_hostname_needs_uts_namespace():
    with pytest.raises(SpecError, match="uts"):
        Spec(["true"], hostname="box", namespaces=["user", "net"])


# -- argv and env ---------------------------------------------------------------------


def test_bad_argv():
    bad = [[], (), [""], ["a\0b"], ["ls", "x\0"], [None], [1], None, 5, [""] * 2]
    S.each_raises(SpecError, bad, Spec)


def test_argv_forms():
    assert Spec("ls").args == ("ls",)
    assert Spec(["ls", ""]).args == ("ls", "")
    assert Spec([b"/bin/\xff", pathlib.Path("/x")]).args == ("/bin/\udcff", "/x")


def test_bad_env():
    bad = [{"A=B": "1"}, {"": "1"}, {"A\0": "1"}, {"A": "v\0"}, {"A": 1}, {1: "a"}, [("A",)],
           [("A", "1", "2")], 5, [1], "A=1"]
    S.each_raises(SpecError, bad, lambda env: Spec(["true"], env=env))


def test_env_forms():
    assert Spec(["true"], env=None).environ is None
    assert Spec(["true"], env={}).environ == {}
    assert Spec(["true"], env={"A": "1=2", "B": ""}).env == (("A", "1=2"), ("B", ""))
    assert Spec(["true"], env=[("A", "1"), ("A", "2")]).environ == {"A": "2"}


# -- ids, sizes, networks, namespaces -------------------------------------------------


@given(S.hostile_ids())
def test_ids(value):
    got = build(check_id, value, "uid")
    ok = type(value) is int and 0 <= value <= MAX_ID
    assert (got is not None) == ok


def test_bad_ids():
    bad = [-1, MAX_ID + 1, 2**32, True, False, 1.0, "0"]
    for field in ("uid", "gid"):
        S.each_raises(SpecError, bad, lambda v, f=field: Spec(["true"], **{f: v}))
    assert Spec(["true"], uid=MAX_ID, gid=0).uid == MAX_ID


def test_parse_size_examples():
    table = [("64M", 64 << 20), ("1g", 1 << 30), ("512KiB", 512 << 10), ("10", 10),
             (" 2 T ", 2 << 40), ("3mb", 3 << 20), ("1kB", 1024), (4096, 4096)]
    assert [(text, parse_size(text)) for text, _ in table] == table


def test_bad_sizes():
    bad = ["12Q", 0, -1, "0", "-5M", "", "1.5M", 1.5, True, 2**63, "9" * 30, "９", "M", "1e6"]
    S.each_raises(SpecError, bad, parse_size)
    S.each_raises(SpecError, bad, lambda size: Tmpfs("/x", size=size))
    with pytest.raises(SpecError, match="tmpfs size.*12Q"):
        Tmpfs("/x", size="12Q")


@given(S.size_strings())
def test_size_strings(pair):
    text, value = pair
    if value >= 2**63:
        with pytest.raises(SpecError):
            parse_size(text)
    else:
        assert parse_size(text) == value


@given(S.hostile_sizes())
def test_any_size_is_bytes_or_spec_error(value):
    got = build(parse_size, value)
    if got is not None:
        assert type(got) is int and 0 < got < 2**63


def test_bad_network():
    S.each_raises(SpecError, ["Bogus", "", "NONE", 1, ["none"], "../x", "a" * 300, "ünï", "-a",
                              "a.b", "a_b"],
                  lambda n: Spec(["true"], network=n))
    with pytest.raises(SpecError, match="network name 'Bogus'"):
        Spec(["true"], network="Bogus")


def test_a_network_by_name_or_value():
    assert Spec(["true"], network="ci").network == Network("ci")
    assert Spec(["true"], network=Network("ci")).network.domain == "ci.nsbox"
    assert "net" in Spec(["true"], network="ci").namespaces
    assert Network().name == "bridge" and Spec(["true"], network="bridge").network == Network()
    assert str(Network("ci", subnet="10.1.2.0/24").subnet) == "10.1.2.0/24"
    S.each_raises(SpecError, ["10.0.0.0/28", "10.0.0.0/7", "nope", "10.0.0.1/24", "::/64"],
                  lambda subnet: Network("ci", subnet=subnet))
    with pytest.raises(SpecError, match="'net' namespace"):
        Spec(["true"], network="ci", namespaces=["user", "mount"])


@given(S.hostile_names())
def test_names_are_one_lowercase_label(value):
    got = build(lambda v: Spec(["true"], network="ci", name=v), value)
    ok = value is None or (isinstance(value, str) and 0 < len(value) <= 32 and value.isascii()
          and all(c.islower() or c.isdigit() or c == "-" for c in value)
          and value[0] != "-" and value[-1] != "-" and value not in ("none", "host"))
    assert (got is not None) == ok, value
    if got is not None:
        assert got.name == value


def test_name_and_publish_need_a_network():
    S.each_raises(SpecError, [{"name": "db"}, {"publish": ["0:80"]},
                              {"name": "db", "network": "host"}],
                  lambda kw: Spec(["true"], **kw))


def test_publish_forms():
    spec = Spec(["true"], network="ci", publish=["8080:80", (0, 81), ("0.0.0.0", 9, 82),
                                                 "127.0.0.2:0:83"])
    assert [(p.host_address, p.host_port, p.port) for p in spec.publish] == [
        ("127.0.0.1", 8080, 80), ("127.0.0.1", 0, 81), ("0.0.0.0", 9, 82),
        ("127.0.0.2", 0, 83)]
    assert Spec(["true"], network="ci", publish="1:2").publish == (Publish(1, 2),)
    S.each_raises(SpecError, ["80", "a:b", "1:2:3:4", "x.y:1:2", (1,), (1, 0), (70000, 1),
                              (True, 1), "-1:80", ["8080:80", "8080:81"], 5],
                  lambda p: Spec(["true"], network="ci",
                                 publish=p if isinstance(p, list) else [p]))


def test_network_and_net_namespace():
    assert Spec(["true"]).network == "none" and "net" in Spec(["true"]).namespaces
    assert "net" not in Spec(["true"], network="host").namespaces
    S.each_raises(SpecError, [("host", ["user", "net"]), ("none", ["user"]), ("none", "user")],
                  lambda c: Spec(["true"], network=c[0], namespaces=c[1]))


def test_network_is_derived_from_explicit_namespaces():
    assert Spec(["true"], namespaces=["user", "mount"]).network == "host"
    assert Spec(["true"], namespaces="user,net").network == "none"
    assert Spec(["true"], namespaces=[]).network == "host"
    assert Spec(["true"], network=None).network == "none"
    spec = Spec(["true"]).replace(namespaces=["user"])
    assert (spec.network, spec.namespaces) == ("host", frozenset({"user"}))
    assert spec.replace(namespaces=None).network == "none"


@given(st.lists(st.sampled_from(NAMESPACES), unique=True))
def test_derived_network_matches_namespaces(names):
    spec = Spec(["true"], namespaces=names)
    assert spec.namespaces == frozenset(names)
    assert spec.network == ("none" if "net" in names else "host")


def test_bad_namespaces():
    S.each_raises(SpecError, [["bogus"], "user,bogus", ["USER"], 5, [None], "net,,bogus"],
                  lambda ns: Spec(["true"], namespaces=ns))


def test_namespace_forms():
    expect = frozenset({"user", "net"})
    assert Spec(["true"], namespaces="user,net").namespaces == expect
    assert Spec(["true"], namespaces=["net", "user", "user"]).namespaces == expect
    assert Spec(["true"]).namespaces == frozenset(NAMESPACES)


# -- mounts --------------------------------------------------------------------------


@given(S.hostile_mounts())
def test_any_mounts_build_or_raise(mounts):
    spec = build(Spec, ["true"], mounts=mounts)
    if spec is not None:
        dsts = [m.dst for m in spec.mounts]
        assert len(dsts) == len(set(dsts))


def test_bind_defaults_and_normalization():
    b = Bind("/srv//data/")
    assert (b.src, b.dst, b.readonly) == ("/srv/data", "/srv/data", False)
    assert Bind("/", "/host").src == "/"
    assert Tmpfs("/scratch", size="64M").size == 64 << 20
    assert Tmpfs("/scratch").mode == 0o755


def test_bad_mounts():
    makers = [
        lambda: Bind("/"),  # target '/' (use rootfs=)
        lambda: Bind("/a", "/"),
        lambda: Bind("/a", "/."),
        lambda: Bind("/a", readonly="yes"),
        lambda: Tmpfs("/"),
        lambda: Tmpfs("/x", mode=0o10000),
        lambda: Tmpfs("/x", mode=-1),
        lambda: Tmpfs("/x", mode=True),
        lambda: Tmpfs("/x", mode="755"),
    ]
    S.each_raises(SpecError, makers, lambda make: make())


def test_two_mounts_at_one_target():
    with pytest.raises(SpecError, match="same target: /data"):
        Spec(["true"], mounts=[Bind("/a", "/data"), Tmpfs("/data/")])


def test_mounts_need_the_mount_namespace():
    with pytest.raises(SpecError, match="mount"):
        Spec(["true"], mounts=[Tmpfs("/x")], namespaces=["user", "net"])
    with pytest.raises(SpecError, match="mount"):
        Spec(["true"], rootfs="/", namespaces=["user", "net"])


def test_bad_mount_containers():
    S.each_raises(SpecError, [5, "abc", [object()], [("/a", "/b")], {"/a": "/b"}],
                  lambda mounts: Spec(["true"], mounts=mounts))


def test_pass_fds():
    assert Spec(["true"], pass_fds=[9, 0, 1, 2, 5, 9]).pass_fds == (5, 9)
    for bad in ([-1], [True], ["3"], 5, None):
        with pytest.raises(SpecError):
            Spec(["true"], pass_fds=bad)


# -- Spec as a value -------------------------------------------------------------------


def test_spec_is_frozen_and_hashable():
    a = Spec(["ls", "-l"], env={"A": "1"}, mounts=[Tmpfs("/x", size="1M"), Bind("/etc")],
             hostname="box", uid=1, gid=2)
    b = Spec(("ls", "-l"), env=[("A", "1")], mounts=(Tmpfs("/x", size=1 << 20), Bind("/etc")),
             hostname="box", uid=1, gid=2)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(FrozenInstanceError):
        a.hostname = "other"
    with pytest.raises(FrozenInstanceError):
        a.mounts[0].dst = "/y"
    with pytest.raises((AttributeError, TypeError)):
        a.extra = 1  # slots: no new attributes


def test_spec_replace():
    spec = Spec(["true"], hostname="box", env={"A": "1"})
    other = spec.replace(hostname="other", uid=5)
    assert (other.hostname, other.uid, other.env) == ("other", 5, (("A", "1"),))
    assert spec.hostname == "box" and spec.uid is None  # unchanged
    assert spec.replace() is spec
    # validated again
    with pytest.raises(SpecError):
        spec.replace(hostname="bad_name")
    with pytest.raises(TypeError):
        spec.replace(bogus=1)
    # network='host' without explicit namespaces drops only the net namespace
    host = spec.replace(network="host")
    assert host.namespaces == frozenset(NAMESPACES) - {"net"}
    assert host.replace(network="none").namespaces == frozenset(NAMESPACES)


@given(S.specs(), S.anything_kwargs())
def test_replace_is_make_spec_over_the_fields(spec, changes):
    got = build(spec.replace, **changes)
    if got is not None:
        assert isinstance(got, Spec)
        derived = {"namespaces", "network"} if {"namespaces", "network"} & set(changes) else set()
        for name in SPEC_OPTIONS - set(changes) - derived:
            assert getattr(got, name) == getattr(spec, name)


def test_unencodable_strings_are_spec_errors():
    # Lone surrogates (not from surrogateescape) cannot reach the kernel.
    cases = [{"args": ["echo", "\ud800"]}, {"args": ["\udfff"]},
             {"args": ["true"], "env": {"A": "\ud800"}}, {"args": ["true"], "env": {"\ud800": "1"}},
             {"args": ["true"], "cwd": "/a\ud800"}, {"args": ["true"], "rootfs": "/\ud800"},
             {"args": ["true"], "mounts": [Bind("/etc", "/x")], "cwd": "/\udbff"}]
    S.each_raises(SpecError, cases, lambda kw: make_spec(**kw))
    S.each_raises(SpecError, ["/\ud800", "/a/\udbff"], Bind)
    S.each_raises(SpecError, ["/\ud800"], Tmpfs)
    # surrogateescape (bytes that are not UTF-8) stays valid
    assert Spec([b"\xff"], cwd=b"/\xfe").cwd == "/\udcfe"


def test_pass_fds_must_fit_an_int():
    assert Spec(["true"], pass_fds=[2**31 - 1]).pass_fds == (2**31 - 1,)
    S.each_raises(SpecError, [[2**31], [2**40], [-1]], lambda fds: Spec(["true"], pass_fds=fds))


# -- known bugs -----------------------------------------------------------------------


def test_fixed_surrogate_hostname_is_spec_error():
    with pytest.raises(SpecError):
        Spec(["true"], hostname="a\ud800")


def test_fixed_huge_size_string_is_spec_error():
    with pytest.raises(SpecError):
        parse_size("9" * 5000)


def test_fixed_namespaces_from_an_iterator():
    spec = Spec(["true"], namespaces=(n for n in ["user", "mount"]))
    assert spec.namespaces == frozenset({"user", "mount"})
