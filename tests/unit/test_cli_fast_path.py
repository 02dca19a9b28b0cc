"""The CLI's fast argv parser means exactly what argparse means, or steps aside."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nsbox._cli import CliError, RunArgs, build_parser, fast_parse, spec_to_argv
from nsbox._spec import Bind, Spec, Tmpfs

OPTIONS = ["--rootfs", "--chdir", "--network", "--hostname", "--uid", "--gid", "--namespaces",
           "--timeout", "--status-fd", "--bind", "--ro-bind", "--tmpfs", "--env", "--clearenv",
           "--bogus", "-h", "--help", "--host", "-x"]
VALUES = ["none", "host", "bogus", "0", "7", "-5", "-.5", "-x", "1.5", "0", "-1", "/a", "/a:/b",
          "/a\\:b", "/t:size=1M", "/t:size=1M,mode=1777", "/t:mode=9", "/t:x=1", "a=b", "A",
          "user,mount", "", "=", ":", "--", "cmd", "-", "nan", "inf"]


def argparse_view(argv: list[str]) -> dict | None:
    try:
        ns = build_parser().parse_args(["run", *argv])
    except (CliError, SystemExit):
        return None
    view = RunArgs()
    for name in RunArgs.__slots__:
        setattr(view, name, getattr(ns, name))
    return view.as_dict()


tokens = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(VALUES),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(OPTIONS), st.sampled_from(VALUES)),
)


@settings(max_examples=500)
@given(st.lists(tokens, max_size=8))
def test_fast_parse_agrees_with_argparse(argv):
    fast = fast_parse(argv)
    if fast is None:
        return  # argparse decides, and gives its own messages
    assert argparse_view(argv) == fast.as_dict()


def test_fast_parse_takes_ordinary_argv():
    spec = Spec(["ls", "-l"], hostname="box", mounts=[Bind("/a", "/b"), Tmpfs("/t", size="1M")],
                env={"A": "1"}, uid=3)
    assert fast_parse(spec_to_argv(spec)) is not None
    assert fast_parse(["--hostname", "box", "--bind", "/a:/b", "--", "true"]) is not None
    assert fast_parse(["--help"]) is None
    assert fast_parse(["--hostname"]) is None
    assert fast_parse(["--network", "bogus", "--", "x"]).network == "bogus"  # a network's name
    assert fast_parse(["--publish", "0:80", "-p", "1:2", "--", "x"]) is None  # -p: argparse
