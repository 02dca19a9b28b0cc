"""Hypothesis strategies for nsbox's inputs (valid values, hostile values, junk), and helpers.

`cli=True` variants only produce what the CLI can express: no pass_fds (the
CLI has no such option).
"""

from __future__ import annotations

import functools
import os
import posixpath

from hypothesis import strategies as st

from nsbox._spec import (
    MAX_ID,
    NAMESPACES,
    NETWORK_MODES,
    Bind,
    Limits,
    Network,
    Publish,
    Spec,
    Tmpfs,
)

# -- text ---------------------------------------------------------------------

# Characters that survive os.fsencode: any Unicode scalar value (no surrogates)
# plus the surrogateescape range that bytes paths decode to.
_ESCAPED = st.sampled_from(["\udc80", "\udcff", "\udce9"])


@functools.cache
def _chars(exclude: str = "") -> st.SearchStrategy[str]:
    return st.one_of(
        st.characters(codec="utf-8", exclude_characters="\0" + exclude),
        _ESCAPED,
    )


@functools.cache
def safe_text(exclude: str = "", min_size: int = 0, max_size: int = 12):
    """Strings without NUL (and without `exclude`), encodable to the filesystem."""
    return st.text(_chars(exclude), min_size=min_size, max_size=max_size)


# -- paths ----------------------------------------------------------------------

# A small vocabulary makes nesting (parents and children) and collisions with
# the default mounts (/dev, /proc, /tmp) common.
_WORDS = ["a", "b", "c", "dev", "proc", "tmp", "etc", "x y", "é", "data"]


@functools.cache
def components(cli: bool = False):
    exclude = "/"  # ':' too: the CLI escapes it as '\\:'
    general = safe_text(exclude, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
    return st.one_of(st.sampled_from(_WORDS), st.sampled_from(_WORDS), general)


@functools.cache
def target_paths(cli: bool = False, max_depth: int = 3):
    """Normalized absolute paths other than '/'."""
    return st.lists(components(cli), min_size=1, max_size=max_depth).map(
        lambda parts: "/" + "/".join(parts)
    )


@functools.cache
def abs_paths(cli: bool = False):
    """Normalized absolute paths, '/' included."""
    return st.one_of(st.just("/"), target_paths(cli))


_RAW_PIECES = ["", ".", "a", "b", "x y", "é", "\udcff"]


@st.composite
def raw_abs_paths(draw):
    """Valid but unnormalized absolute paths ('//', '/./', trailing '/')."""
    parts = draw(st.lists(st.sampled_from(_RAW_PIECES), min_size=1, max_size=6))
    lead = draw(st.sampled_from(["/", "//", "///"]))
    tail = draw(st.sampled_from(["", "/", "/."]))
    return lead + "/".join(parts) + tail


@functools.cache
def hostile_paths():
    """Anything path-like, valid or not (no lone surrogates: a known bug)."""
    pieces = st.sampled_from(["", ".", "..", "a", "b c", "\0", "é", "x" * 300, "\udcff", ":",
                              "\ud800"])
    joined = st.builds(
        lambda lead, parts: lead + "/".join(parts),
        st.sampled_from(["", "/", "//", "./", "../"]),
        st.lists(pieces, max_size=8),
    )
    long = st.builds(lambda n, c: "/" + c * n, st.integers(4000, 4200), st.sampled_from("aé"))
    return st.one_of(
        joined,
        long,
        safe_text(max_size=20),
        st.binary(max_size=20),
        junk(),
    )


def path_oracle(value) -> str | None:
    """The normalized path nsbox must accept `value` as, or None if it must refuse."""
    import os

    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        return None
    if not value.startswith("/") or "\0" in value or ".." in value.split("/"):
        return None
    try:
        if len(os.fsencode(value)) >= 4096:
            return None
    except UnicodeEncodeError:  # a lone surrogate (not surrogateescape's)
        return None
    norm = posixpath.normpath(value)
    return "/" + norm.lstrip("/")


# -- hostnames --------------------------------------------------------------------

_LABEL = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\Z")


@functools.cache
def hostnames():
    """Valid host names (<= 64 bytes, RFC 1123 labels)."""
    return (
        st.lists(_LABEL, min_size=1, max_size=4)
        .map(".".join)
        .filter(lambda h: len(h) <= 64)
    )


@functools.cache
def hostile_hostnames():
    return st.one_of(
        hostnames(),
        st.text(st.sampled_from("ab-._0Z é\n"), max_size=70),
        st.text(max_size=80),
        st.builds(lambda n: "a" * n, st.integers(60, 70)),
        st.builds(lambda n: ".".join(["abcdefgh"] * n), st.integers(1, 9)),
        junk(),
    )


_ALNUM = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def hostname_oracle(value) -> bool:
    if not isinstance(value, str) or not value or len(value.encode()) > 64:
        return False
    for label in value.split("."):
        if not 1 <= len(label) <= 63:
            return False
        if not set(label) <= _ALNUM | {"-"} or label[0] == "-" or label[-1] == "-":
            return False
    return True


# -- the other options ------------------------------------------------------------


@functools.cache
def junk():
    """Values of the wrong type (and some of the right type)."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
        st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=4)),
                        max_size=3),
        st.just(object()),
        st.tuples(),
    )


@functools.cache
def argvs(cli: bool = False):
    return st.lists(safe_text(max_size=8), min_size=1, max_size=5).filter(lambda a: a[0] != "")


@functools.cache
def hostile_argvs():
    item = st.one_of(safe_text(max_size=6), st.sampled_from(["", "a\0b", "\0", "\ud800"]),
                     st.binary(max_size=4))
    return st.one_of(argvs(), st.lists(item, max_size=4), junk())


@functools.cache
def env_names(cli: bool = False):
    # Names starting with '-' too: spec_to_argv writes --env=NAME=VALUE.
    return safe_text("=", min_size=1, max_size=8)


@functools.cache
def envs(cli: bool = False):
    return st.dictionaries(env_names(cli), safe_text(max_size=8), max_size=4)


@functools.cache
def hostile_envs():
    key = st.one_of(env_names(), st.sampled_from(["", "A=B", "=", "A\0", "PATH", "\ud800"]),
                    junk())
    val = st.one_of(safe_text(max_size=6), st.sampled_from(["", "v\0", "a=b", "\udfff"]), junk())
    return st.one_of(
        st.none(),
        envs(),
        st.dictionaries(st.one_of(key.filter(_hashable)), val, max_size=3),
        st.lists(st.tuples(key, val), max_size=3),
        st.lists(st.lists(safe_text(max_size=3), max_size=3), max_size=3),
        junk(),
    )


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


@functools.cache
def ids():
    return st.integers(0, MAX_ID)


@functools.cache
def hostile_ids():
    return st.one_of(
        ids(),
        st.integers(max_value=-1),
        st.integers(min_value=MAX_ID + 1),
        st.sampled_from([-1, MAX_ID, MAX_ID + 1, 2**32, 2**64, True, False, 1.0, "0"]),
        junk(),
    )


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@st.composite
def size_strings(draw):
    """Valid size strings and their value in bytes."""
    n = draw(st.integers(1, 10**6))
    unit = draw(st.sampled_from(sorted(_UNITS)))
    cased = draw(st.sampled_from([unit.lower(), unit.upper()]))
    suffix = draw(st.sampled_from(["", "b", "B"] + (["iB", "ib"] if unit else [])))
    space = draw(st.sampled_from(["", " "]))
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return pad + f"{n}{space}{cased}{suffix}" + pad, n * _UNITS[unit]


@functools.cache
def sizes():
    return st.one_of(st.integers(1, 2**63 - 1), size_strings().map(lambda p: p[0]))


@functools.cache
def hostile_sizes():
    return st.one_of(
        sizes(),
        st.sampled_from(["12Q", "", "M", "-5M", "0", "0k", "1.5M", "1e6", "64MM", "1 G B",
                         0, -1, 2**63, 2**63 - 1, True, 1.0, "９"]),
        st.integers(),
        st.text(st.sampled_from("0123456789kmgtKMGTiBbQ .-"), max_size=8),
        junk(),
    )


@functools.cache
def modes():
    return st.integers(0, 0o7777)


@st.composite
def _binds(draw, cli: bool):
    src = draw(abs_paths(cli))
    dst = draw(target_paths() if src == "/" else _maybe(target_paths()))
    return Bind(src, dst, readonly=draw(st.booleans()))


@functools.cache
def binds(cli: bool = False):
    return _binds(cli)


@functools.cache
def tmpfses(cli: bool = False):
    return st.builds(
        Tmpfs,
        target_paths(cli),
        size=st.one_of(st.none(), sizes()),
        mode=modes(),
    )


@functools.cache
def mount_lists(cli: bool = False, max_size: int = 5):
    mounts = st.lists(st.one_of(binds(cli), tmpfses(cli)), max_size=max_size,
                      unique_by=lambda m: m.dst)
    return mounts


@functools.cache
def hostile_mounts():
    return st.one_of(
        mount_lists(),
        st.builds(lambda m: [m, m], st.one_of(binds(), tmpfses())),  # duplicate target
        st.lists(junk(), max_size=2),
        junk(),
    )


@functools.cache
def hostile_networks():
    return st.one_of(st.sampled_from([*NETWORK_MODES, "bogus", "", "NONE", "Host", "../x",
                                      "a" * 300, "ünï", "-x", "x-", "a.b"]),
                     names(), junk())


@functools.cache
def names():
    """Valid network and sandbox names: one lower-case DNS label."""
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    return st.builds(lambda a, mid, b: a + mid + b, st.sampled_from(alnum),
                     st.text(alnum + "-", max_size=10), st.sampled_from(alnum)
                     ).filter(lambda n: n not in NETWORK_MODES)


@functools.cache
def hostile_names():
    return st.one_of(names(), st.sampled_from(["", "../x", "a" * 300, "Upper", "ünï", "-x",
                                               "x-", "a.b", "a b", "none", "host"]), junk())


@functools.cache
def publishes():
    port = st.integers(1, 65535)
    return st.lists(st.builds(Publish, st.integers(1024, 65535), port,
                              st.sampled_from(["127.0.0.1", "0.0.0.0", "127.0.0.2"])),
                    max_size=2, unique_by=lambda p: (p.host_address, p.host_port))


@functools.cache
def hostile_namespaces():
    name = st.sampled_from([*NAMESPACES, "bogus", "", "USER"])
    return st.one_of(
        st.none(),
        st.frozensets(st.sampled_from(NAMESPACES)),
        st.lists(name, max_size=8),
        st.lists(name, max_size=8).map(",".join),
        junk(),
    )


# -- limits ---------------------------------------------------------------------------

_SIZE_TEXT = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 4096),
                       st.sampled_from(["M", "m", "G", "MiB", "MB"]))


@st.composite
def _limits(draw):
    fields = {}
    memory = None
    if draw(st.booleans()):
        memory = draw(st.one_of(st.integers(1 << 20, 1 << 40), _SIZE_TEXT))
        fields["memory"] = memory
        if draw(st.booleans()):
            base = Limits(memory=memory).memory
            swap = st.integers(base, base + (1 << 41))
            fields["memory_swap"] = draw(st.one_of(st.just(-1), swap))
    fields["pids"] = draw(_maybe(st.integers(2, 1 << 22)))
    fields["cpus"] = draw(_maybe(st.floats(0.01, float(os.cpu_count() or 1))))
    fields["cpu_time"] = draw(_maybe(st.integers(1, 10**6)))
    fields["nofile"] = draw(_maybe(st.integers(1, 1 << 20)))
    fields["fsize"] = draw(_maybe(st.one_of(st.just(0), st.integers(1, 1 << 40))))
    fields["core"] = draw(_maybe(st.one_of(st.just(0), st.integers(1, 1 << 40))))
    fields["cgroup_parent"] = draw(_maybe(st.sampled_from(["/nsbx-ci", "/a/b", "/"])))
    return Limits(**{k: v for k, v in fields.items() if v is not None})


@functools.cache
def limits():
    """Valid Limits (pids >= 2, so valid with a pid namespace too)."""
    return _limits()


@functools.cache
def hostile_limits():
    """Limits or mappings: valid, out of range, malformed, junk."""
    bad_number = st.one_of(st.integers(-10, 0), st.just("12Q"), st.just(""), st.just("-5M"),
                           st.floats(allow_nan=True, allow_infinity=True), junk())
    field = st.sampled_from(["memory", "memory_swap", "pids", "cpus", "cpu_time", "nofile",
                             "fsize", "core", "cgroup_parent", "bogus"])
    return st.one_of(
        limits(),
        st.dictionaries(field, st.one_of(bad_number, st.integers(0, 1 << 70), _SIZE_TEXT),
                        max_size=3),
        junk(),
    )


# -- whole specs --------------------------------------------------------------------


_NON_NET = st.sets(st.sampled_from([n for n in NAMESPACES if n != "net"]))
_NS_FORM = st.sampled_from(["default", "frozenset", "list", "str"])
_NETWORK = st.one_of(st.sampled_from(NETWORK_MODES), names())
_FDS = st.lists(st.integers(0, 1000), max_size=4)


@functools.cache
def _maybe(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def _specs(draw, cli: bool):
    network = draw(_NETWORK)
    joined = network not in NETWORK_MODES
    form = draw(_NS_FORM)
    if form == "default":
        namespaces = None
        ns = set(NAMESPACES) - ({"net"} if network == "host" else set())
    else:
        ns = set(draw(_NON_NET)) | ({"net"} if network != "host" else set())
        ordered = [n for n in NAMESPACES if n in ns]
        namespaces = {"frozenset": frozenset(ns), "list": ordered,
                      "str": ",".join(ordered)}[form]
        if not joined and draw(st.booleans()):
            network = None  # derived from the namespaces
    kwargs = {"network": network, "namespaces": namespaces}
    if joined:
        if not cli and draw(st.booleans()):
            kwargs["network"] = Network(network)
        kwargs["name"] = draw(_maybe(names()))
        kwargs["publish"] = draw(publishes())
    if "mount" in ns:
        kwargs["mounts"] = draw(mount_lists(cli))
        kwargs["rootfs"] = draw(_maybe(abs_paths(cli)))
    if "uts" in ns:
        kwargs["hostname"] = draw(_maybe(hostnames()))
    kwargs["env"] = draw(_maybe(envs(cli)))
    kwargs["cwd"] = draw(_maybe(abs_paths(cli)))
    kwargs["uid"] = draw(_maybe(ids()))
    kwargs["gid"] = draw(_maybe(ids()))
    if not cli:
        kwargs["pass_fds"] = draw(_FDS)
    kwargs["limits"] = draw(_maybe(limits()))
    return Spec(draw(argvs(cli)), **kwargs)


@functools.cache
def specs(cli: bool = False):
    """Valid Specs, covering every option and every namespace combination."""
    return _specs(cli)


@functools.cache
def anything_kwargs():
    """Options for make_spec: each one absent, valid, hostile or junk."""
    return st.fixed_dictionaries({}, optional={
        "env": hostile_envs(),
        "cwd": hostile_paths(),
        "pass_fds": st.one_of(st.lists(st.integers(-3, 2**40), max_size=3), junk()),
        "rootfs": hostile_paths(),
        "mounts": hostile_mounts(),
        "network": hostile_networks(),
        "name": hostile_names(),
        "publish": st.one_of(publishes(), st.sampled_from(["80", "a:1:2", "1:2:3:4", (0, 0),
                                                          (70000, 1), "0:80"]), junk()),
        "hostname": hostile_hostnames(),
        "uid": hostile_ids(),
        "gid": hostile_ids(),
        "namespaces": hostile_namespaces(),
        "limits": hostile_limits(),
    })


# -- helpers ----------------------------------------------------------------------------


def each_raises(exc_type, cases, call) -> None:
    """call(case) raises exc_type for every case; reports every case that did not.

    One test over a table instead of one test per row: every test pays for the
    autouse leak check (a gc.collect), so tables stay in one test.
    """
    wrong = []
    for case in cases:
        try:
            call(case)
        except exc_type as exc:
            if not str(exc):
                wrong.append((case, f"{type(exc).__name__} without a message"))
        except Exception as exc:  # noqa: BLE001 - reported below
            wrong.append((case, f"{type(exc).__name__}: {exc}"))
        else:
            wrong.append((case, "no exception"))
    assert not wrong, f"expected {exc_type.__name__} for: {wrong!r}"
