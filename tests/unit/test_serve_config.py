"""`nsbox serve`'s configuration and routing: pure, no sandbox."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nsbox
from nsbox._serve_config import (
    BASE_ENV,
    DEFAULT_LISTEN,
    Route,
    check_id,
    load_config,
    make_template,
    parse_config,
    parse_listen,
    route,
)

TEMPLATE = {"command": ["python3", "-m", "http.server", "8000"], "port": 8000}


def test_a_minimal_configuration_takes_the_defaults():
    c = parse_config({"template": TEMPLATE})
    assert c.listen == DEFAULT_LISTEN and c.listen[0] == "127.0.0.1"  # loopback
    assert c.domain == "localhost" and c.auth and c.token is None
    assert c.template.port == 8000 and c.template.ready.http is None
    spec = c.template.spec
    assert spec.args == ("python3", "-m", "http.server", "8000")
    assert spec.network.name == "serve" and spec.name is None
    assert dict(spec.env) == BASE_ENV  # not the router's own environment


def test_a_full_configuration():
    c = parse_config({
        "serve": {"listen": "[::1]:9000", "domain": "Envs.Example.", "idle_timeout": 0,
                  "max_envs": 3, "token": "x" * 20, "upstream_timeout": 2.5, "auth": True},
        "template": {**TEMPLATE, "network": "ci", "env": {"A": "1"}, "cwd": "/srv",
                     "mounts": [{"bind": "/usr", "target": "/u", "readonly": True},
                                {"tmpfs": "/data", "size": "64M"}],
                     "limits": {"memory": "256M", "pids": 64},
                     "ready": {"http": "/healthz"}, "hostname": "ignored"},
    })
    assert c.listen == ("::1", 9000) and c.domain == "envs.example"
    assert c.idle_timeout == 0 and c.max_envs == 3 and c.upstream_timeout == 2.5
    t = c.template
    assert t.ready.http == "/healthz"
    assert t.spec.mounts == (nsbox.Bind("/usr", "/u", readonly=True),
                             nsbox.Tmpfs("/data", size="64M"))
    assert t.spec.limits.memory == 256 << 20 and dict(t.spec.env)["A"] == "1"


@pytest.mark.parametrize("data, words", [
    ({}, "[template]"),
    ({"template": {"port": 80}}, "template.command"),
    ({"template": {"command": ["x"]}}, "template.port"),
    ({"template": {**TEMPLATE, "port": 0}}, "template.port"),
    ({"template": {**TEMPLATE, "port": "80"}}, "template.port"),
    ({"template": {**TEMPLATE, "network": "host"}}, "template.network"),
    ({"template": {**TEMPLATE, "network": "none"}}, "template.network"),
    ({"template": {**TEMPLATE, "network": "Bad_Net"}}, "template.network"),
    ({"template": {**TEMPLATE, "command": []}}, "template.command"),
    ({"template": {**TEMPLATE, "command": ["a\0b"]}}, "NUL"),
    ({"template": {**TEMPLATE, "colour": "red"}}, "colour"),
    ({"template": {**TEMPLATE, "env": {"A": 1}}}, "template.env"),
    ({"template": {**TEMPLATE, "mounts": [{"bind": "rel"}]}}, "rel"),
    ({"template": {**TEMPLATE, "mounts": [{"volume": "/x"}]}}, "template.mounts[0]"),
    ({"template": {**TEMPLATE, "mounts": [{"tmpfs": "/x", "size": "lots"}]}}, "lots"),
    ({"template": {**TEMPLATE, "limits": {"memory": "lots"}}}, "lots"),
    ({"template": {**TEMPLATE, "limits": {"colour": 1}}}, "colour"),
    ({"template": {**TEMPLATE, "ready": {"http": "healthz"}}}, "template.ready.http"),
    ({"template": {**TEMPLATE, "ready": {"tcp": False}}}, "template.ready.tcp"),
    ({"template": {**TEMPLATE, "ready": {"udp": True}}}, "template.ready"),
    ({"template": TEMPLATE, "serve": {"listen": "localhost:80"}}, "IP address"),
    ({"template": TEMPLATE, "serve": {"listen": "127.0.0.1"}}, "ADDR:PORT"),
    ({"template": TEMPLATE, "serve": {"listen": "127.0.0.1:70000"}}, "port"),
    ({"template": TEMPLATE, "serve": {"domain": "a..b"}}, "serve.domain"),
    ({"template": TEMPLATE, "serve": {"idle_timeout": -1}}, "serve.idle_timeout"),
    ({"template": TEMPLATE, "serve": {"idle_timeout": True}}, "serve.idle_timeout"),
    ({"template": TEMPLATE, "serve": {"upstream_timeout": 0}}, "serve.upstream_timeout"),
    ({"template": TEMPLATE, "serve": {"upstream_timeout": float("inf")}}, "upstream_timeout"),
    ({"template": TEMPLATE, "serve": {"max_envs": 0}}, "serve.max_envs"),
    ({"template": TEMPLATE, "serve": {"token": "short"}}, "serve.token"),
    ({"template": TEMPLATE, "serve": {"auth": "no"}}, "serve.auth"),
    ({"template": TEMPLATE, "serve": {"max_env": 3}}, "max_env"),
    ({"template": TEMPLATE, "extra": {}}, "extra"),
])
def test_bad_configurations_name_what_is_wrong(data, words):
    with pytest.raises(nsbox.SpecError) as info:
        parse_config(data)
    assert words in str(info.value)


def test_overrides_merge_env_and_replace_the_rest():
    t = make_template({**TEMPLATE, "env": {"A": "1", "B": "2"}},
                      {"env": {"B": "3"}, "command": ["srv"], "port": 9000,
                       "ready": {"http": "/up"}})
    assert dict(t.spec.env)["A"] == "1" and dict(t.spec.env)["B"] == "3"
    assert t.spec.args == ("srv",) and t.port == 9000 and t.ready.http == "/up"
    with pytest.raises(nsbox.SpecError, match="mounts"):
        make_template(TEMPLATE, {"mounts": []})  # not an override a create may make


def test_load_config_reads_toml_and_reports_errors(tmp_path):
    good = tmp_path / "envs.toml"
    good.write_text('[serve]\nmax_envs = 4\n[template]\ncommand = ["srv"]\nport = 81\n')
    assert load_config(good).max_envs == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("[template\n")
    with pytest.raises(nsbox.SpecError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(nsbox.SpecError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[template]\ncommand = ["caf\xe9"]\nport = 81\n')
    with pytest.raises(nsbox.SpecError, match="not UTF-8"):
        load_config(latin)


@pytest.mark.parametrize("serve", [{"idle_timeout": 10**400}, {"grace": 10**30},
                                   {"listen": "127.0.0.1:\u00b2"}])
def test_hostile_serve_values_are_spec_errors(serve):
    with pytest.raises(nsbox.SpecError):
        parse_config({"serve": serve, "template": TEMPLATE})


@pytest.mark.parametrize("limits", [{"cpus": 10**400}, {"pids": "\u00b2"},
                                    {"nofile": "9" * 5000}])
def test_hostile_template_limits_are_spec_errors(limits):
    with pytest.raises(nsbox.SpecError):
        parse_config({"template": {**TEMPLATE, "limits": limits}})


def test_parse_listen():
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("[::]:80") == ("::", 80)


@pytest.mark.parametrize("target, header, host, expected", [
    ("/_nsbox/envs", "a", "a.localhost", Route("control", target="/envs")),
    ("/_nsbox", None, None, Route("control", target="/")),
    ("/x?y", "abc", "other.localhost", Route("env", id="abc", target="/x?y")),
    ("/x", None, "abc.localhost:8080", Route("env", id="abc", target="/x")),
    ("/x", None, "ABC.LocalHost.", Route("env", id="abc", target="/x")),
    ("/x", None, "localhost:8080", Route("none")),
    ("/env/abc/x/y?q=1", None, "localhost", Route("env", id="abc", target="/x/y?q=1")),
    ("/env/abc", None, None, Route("env", id="abc", target="/")),
    ("/env/abc?q", None, None, Route("env", id="abc", target="/?q")),
    ("/envelope", None, None, Route("none")),
    ("/", None, None, Route("none")),
])
def test_routing_order_and_stripping(target, header, host, expected):
    assert route(target, header, host, "localhost") == expected


@pytest.mark.parametrize("target, header, host", [
    ("/env/../x/", None, None),
    ("/env//x", None, None),
    ("/env/a%2fb/x", None, None),
    ("/x", "../x", None),
    ("/x", "A", None),
    ("/x", "a" * 33, None),
    ("/x", None, "a.b.localhost"),
    ("/x", None, "-a.localhost"),
    ("http://evil/x", None, None),
    ("*", None, None),
])
def test_bad_ids_are_bad_requests(target, header, host):
    assert route(target, header, host, "localhost").kind == "bad"


@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=40)),
       st.one_of(st.none(), st.text(max_size=60)))
def test_routing_never_fails_and_ids_are_always_valid(target, header, host):
    r = route(target, header, host, "localhost")
    assert r.kind in ("control", "env", "none", "bad")
    if r.kind == "env":
        assert check_id(r.id) == r.id and r.target.startswith("/")
        assert ".." not in r.id and "/" not in r.id


def test_cli_serve_reports_a_bad_configuration_in_one_line(tmp_path):
    cfg = tmp_path / "envs.toml"
    cfg.write_text('[template]\ncommand = ["srv"]\nport = 0\n')
    for argv in (["--config", str(cfg)], ["--config", str(tmp_path / "nope.toml")],
                 ["--config", str(cfg), "--bogus"], []):
        proc = subprocess.run([sys.executable, "-m", "nsbox", "serve", *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 125, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("nsbox: ")
        assert "Traceback" not in proc.stderr
