"""make_plan: Spec -> the ordered setup the child performs (pure)."""

from __future__ import annotations

import nsbox_strategies as S
from hypothesis import given
from hypothesis import strategies as st

from nsbox._plan import (
    MF_IN_SCRATCH,
    MF_READONLY,
    MNT_BIND,
    MNT_DEV,
    MNT_PROC,
    MNT_TMPFS,
    NS_BITS,
    make_plan,
)
from nsbox._spec import Bind, Spec, Tmpfs

CALLERS = st.fixed_dictionaries(
    {
        "caller_uid": st.integers(0, 2**32 - 2),
        "caller_gid": st.integers(0, 2**32 - 2),
        "caller_cwd": st.one_of(st.none(), S.abs_paths()),
        "environ": st.dictionaries(S.env_names(), S.safe_text(max_size=5), max_size=3),
    }
)

CTX = {"caller_uid": 1000, "caller_gid": 100, "caller_cwd": "/home/u", "environ": {"A": "1"}}


def plan_of(spec, **ctx):
    return make_plan(spec, **{**CTX, **ctx})


def is_under(path: str, parent: str) -> bool:
    """Strictly below `parent` (an independent spelling of _plan's helper)."""
    if parent == "/":
        return path != "/"
    return path.startswith(parent + "/")


def expected_defaults(spec: Spec):
    taken = {m.dst for m in spec.mounts}
    defaults = [("/dev", MNT_DEV)]
    if "pid" in spec.namespaces:
        defaults.append(("/proc", MNT_PROC))
    defaults.append(("/tmp", MNT_TMPFS))
    return [d for d in defaults if d[0] not in taken]


@given(S.specs(), CALLERS)
def test_plan_invariants(spec, ctx):
    plan = make_plan(spec, **ctx)
    assert plan == make_plan(spec, **ctx)  # pure: same input, same plan
    assert plan.argv == spec.args
    assert plan.namespaces == spec.namespaces
    assert plan.ns_bits == sum(NS_BITS[n] for n in spec.namespaces)
    named = spec.name if "uts" in spec.namespaces else None  # a named sandbox: its host name
    assert plan.hostname == (spec.hostname if spec.hostname is not None else named)
    assert plan.pass_fds == spec.pass_fds
    assert plan.env == (spec.env if spec.env is not None else tuple(ctx["environ"].items()))
    assert plan.root_readonly


@given(S.specs(), CALLERS)
def test_identity(spec, ctx):
    plan = make_plan(spec, **ctx)
    inner_uid = 0 if spec.uid is None else spec.uid
    inner_gid = 0 if spec.gid is None else spec.gid
    if "user" in spec.namespaces:
        assert plan.uid_map == f"{inner_uid} {ctx['caller_uid']} 1\n"
        assert plan.gid_map == f"{inner_gid} {ctx['caller_gid']} 1\n"
        assert (plan.setid_uid, plan.setid_gid) == (-1, -1)
    else:
        assert plan.uid_map is None and plan.gid_map is None
        assert plan.setid_uid == (-1 if spec.uid is None else spec.uid)
        assert plan.setid_gid == (-1 if spec.gid is None else spec.gid)


@given(S.specs(), CALLERS)
def test_filesystem_and_cwd(spec, ctx):
    plan = make_plan(spec, **ctx)
    if "mount" not in spec.namespaces:
        assert plan.mounts == () and plan.root is None
    else:
        assert plan.root == (spec.rootfs or "/")
    if spec.cwd is not None:
        assert (plan.cwd, plan.cwd_required) == (spec.cwd, True)
    elif "mount" in spec.namespaces:
        assert (plan.cwd, plan.cwd_required) == (ctx["caller_cwd"], False)
    else:
        assert (plan.cwd, plan.cwd_required) == (None, False)


@given(S.specs().filter(lambda s: "mount" in s.namespaces))
def test_mount_order(spec):
    mounts = plan_of(spec).mounts
    defaults = expected_defaults(spec)
    # The defaults come first, in their order, unless a user mount replaced one.
    assert [(m.dst, m.kind) for m in mounts[: len(defaults)]] == defaults
    for m in mounts[: len(defaults)]:
        assert not isinstance(m.origin, (Bind, Tmpfs))
    # Then every user mount, exactly once.
    user = mounts[len(defaults):]
    assert sorted(map(id, (m.origin for m in user))) == sorted(map(id, spec.mounts))
    # Parents before children, over the whole list.
    for i, earlier in enumerate(mounts):
        for later in mounts[i + 1:]:
            assert not is_under(earlier.dst, later.dst), (earlier.dst, later.dst)
    # User mounts of equal depth keep the spec's order (stable).
    def depth(m):
        return m.dst.count("/")

    assert [depth(m) for m in user] == sorted(depth(m) for m in user)
    for a in user:
        for b in user:
            if depth(a) == depth(b) and spec.mounts.index(a.origin) < spec.mounts.index(b.origin):
                assert user.index(a) < user.index(b)


@given(S.specs().filter(lambda s: "mount" in s.namespaces))
def test_mount_fields_and_scratch_flag(spec):
    mounts = plan_of(spec).mounts
    for i, m in enumerate(mounts):
        # The nearest (deepest) earlier mount above the target holds it.
        above = [p for p in mounts[:i] if is_under(m.dst, p.dst)]
        holder = max(above, key=lambda p: len(p.dst), default=None)
        scratch = holder is not None and holder.kind in (MNT_TMPFS, MNT_DEV)
        assert bool(m.flags & MF_IN_SCRATCH) == scratch, (m.dst, holder)
        origin = m.origin
        if isinstance(origin, Bind):
            assert (m.kind, m.src, m.dst) == (MNT_BIND, origin.src, origin.dst)
            assert bool(m.flags & MF_READONLY) == origin.readonly
        elif isinstance(origin, Tmpfs):
            assert (m.kind, m.dst, m.size, m.mode) == (MNT_TMPFS, origin.dst, origin.size,
                                                      origin.mode)
            assert not m.flags & MF_READONLY
        else:
            assert not m.flags & MF_READONLY
            assert m.describe() == origin
        assert m.dst.startswith("/")


def test_default_mounts():
    mounts = plan_of(Spec(["true"])).mounts
    assert [(m.kind, m.dst, m.flags) for m in mounts] == [
        (MNT_DEV, "/dev", 0), (MNT_PROC, "/proc", 0), (MNT_TMPFS, "/tmp", 0)
    ]
    assert mounts[2].mode == 0o1777
    no_pid = Spec(["true"], namespaces=["user", "mount", "net"])
    assert [m.dst for m in plan_of(no_pid).mounts] == ["/dev", "/tmp"]


def test_user_mount_replaces_a_default():
    t = Tmpfs("/tmp", size="1M")
    mounts = plan_of(Spec(["true"], mounts=[t])).mounts
    assert [m.dst for m in mounts] == ["/dev", "/proc", "/tmp"]
    assert mounts[2].origin is t and mounts[2].size == 1 << 20


def test_scratch_examples():
    spec = Spec(["true"], mounts=[
        Bind("/srv", "/x/y/z"),        # under a tmpfs of the user: scratch
        Tmpfs("/x"),
        Bind("/etc", "/b"),
        Tmpfs("/b/c"),                 # under a bind: not scratch
        Tmpfs("/tmp/deep/er"),         # under the default /tmp: scratch
        Tmpfs("/dev/q"),               # under the minimal /dev: scratch
        Tmpfs("/proc/q"),              # under proc: not scratch
        Tmpfs("/data"),                # under the (read-only) root: not scratch
    ])
    flags = {m.dst: bool(m.flags & MF_IN_SCRATCH) for m in plan_of(spec).mounts}
    assert flags == {
        "/dev": False, "/proc": False, "/tmp": False, "/x": False, "/b": False, "/data": False,
        "/b/c": False, "/tmp/deep/er": True, "/dev/q": True, "/proc/q": False, "/x/y/z": True,
    }


def test_no_mount_namespace_no_filesystem_setup():
    plan = plan_of(Spec(["true"], namespaces=["user", "net"]))
    assert plan.mounts == () and plan.root is None
    assert (plan.cwd, plan.cwd_required) == (None, False)


def test_cwd():
    assert (plan_of(Spec(["true"], cwd="/w")).cwd, plan_of(Spec(["true"], cwd="/w")).cwd_required
            ) == ("/w", True)
    plan = plan_of(Spec(["true"]), caller_cwd="/home/u")
    assert (plan.cwd, plan.cwd_required) == ("/home/u", False)
    plan = plan_of(Spec(["true"]), caller_cwd=None)
    assert (plan.cwd, plan.cwd_required) == (None, False)


def test_uid_map_text():
    plan = plan_of(Spec(["true"], uid=5, gid=6), caller_uid=1000, caller_gid=100)
    assert (plan.uid_map, plan.gid_map) == ("5 1000 1\n", "6 100 1\n")
    plan = plan_of(Spec(["true"]), caller_uid=1000, caller_gid=100)
    assert (plan.uid_map, plan.gid_map) == ("0 1000 1\n", "0 100 1\n")


def test_environment_is_copied_not_shared():
    environ = {"A": "1"}
    plan = plan_of(Spec(["true"]), environ=environ)
    environ["A"] = "2"
    assert plan.env == (("A", "1"),)
    assert plan_of(Spec(["true"], env={"B": "2"}), environ=environ).env == (("B", "2"),)
