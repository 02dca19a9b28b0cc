"""Mounts: binds, tmpfs, targets created in the sandbox's view only, rootfs, cwd."""

from __future__ import annotations

import os

import pytest
from nsbx_test_helpers import uniq

import nsbox


def run(script: str, **kw) -> nsbox.Result:
    return nsbox.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def ok(script: str, **kw) -> str:
    r = run(script, **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout





# -- binds ---------------------------------------------------------------------------


def test_bind_rw_writes_reach_the_host(data):
    target = f"/mnt/{uniq()}"
    got = ok(f"cat {target}/hello.txt; echo written > {target}/new.txt; "
             f"echo more >> {target}/hello.txt", mounts=[nsbox.Bind(str(data), target)])
    assert got == "hello from the host\n"
    assert (data / "new.txt").read_text() == "written\n"
    assert (data / "hello.txt").read_text() == "hello from the host\nmore\n"


def test_bind_same_path_by_default(data):
    got = ok(f"cat {data}/hello.txt", mounts=[nsbox.Bind(str(data))])
    assert got == "hello from the host\n"


def test_bind_sees_host_changes_live(data):
    target = f"/mnt/{uniq()}"
    with nsbox.Sandbox(["sh", "-c", f"read x; cat {target}/late.txt"], stdin=nsbox.PIPE,
                       stdout=nsbox.PIPE, mounts=[nsbox.Bind(str(data), target)]) as box:
        (data / "late.txt").write_text("late\n")
        out, _ = box.communicate(b"go\n", timeout=20)
    assert out == b"late\n"


def test_bind_readonly(data):
    target = f"/srv/{uniq()}"
    r = run(f"cat {target}/hello.txt; echo x > {target}/new.txt",
            mounts=[nsbox.Bind(str(data), target, readonly=True)])
    assert r.stdout == "hello from the host\n"
    assert r.returncode != 0
    assert "Read-only file system" in r.stderr
    assert not (data / "new.txt").exists()
    r = run(f"rm {target}/hello.txt", mounts=[nsbox.Bind(str(data), target, readonly=True)])
    assert r.returncode != 0
    assert (data / "hello.txt").exists()


def test_readonly_bind_cannot_be_remounted_read_write(data):
    target = f"/srv/{uniq()}"
    run(f"mount -o remount,bind,rw {target} 2>/dev/null; echo changed > {target}/hello.txt",
        mounts=[nsbox.Bind(str(data), target, readonly=True)])
    assert (data / "hello.txt").read_text() == "hello from the host\n"


def test_readonly_bind_is_recursive(tmp_path):
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    tmp_path.chmod(0o755)
    # A read-write bind below a read-only one stays writable; the read-only one does not.
    mounts = [nsbox.Bind(str(outer), "/mnt/nsbx-outer", readonly=True),
              nsbox.Bind(str(other), "/mnt/nsbx-outer/inner")]
    ok("echo x > /mnt/nsbx-outer/inner/f", mounts=mounts)
    assert (other / "f").read_text() == "x\n"
    r = run("echo x > /mnt/nsbx-outer/g", mounts=mounts)
    assert r.returncode != 0 and "Read-only file system" in r.stderr


def test_bind_single_file_to_new_path(tmp_path):
    f = tmp_path / "config.txt"
    f.write_text("single file\n")
    target = f"/etc/{uniq()}.conf"
    got = ok(f"cat {target}; test -f {target} && echo regular",
             mounts=[nsbox.Bind(str(f), target, readonly=True)])
    assert got == "single file\nregular\n"
    assert not os.path.exists(target)


def test_bind_single_file_over_existing_file(tmp_path):
    f = tmp_path / "passwd"
    f.write_text("nsbx:x:0:0::/:/bin/sh\n")
    got = ok("cat /etc/passwd", mounts=[nsbox.Bind(str(f), "/etc/passwd", readonly=True)])
    assert got == "nsbx:x:0:0::/:/bin/sh\n"
    with open("/etc/passwd") as host:
        assert host.read() != got


def test_bind_single_file_rw(tmp_path):
    f = tmp_path / "rw.txt"
    f.write_text("")
    ok("echo appended >> /mnt/nsbx-rw.txt", mounts=[nsbox.Bind(str(f), "/mnt/nsbx-rw.txt")])
    assert f.read_text() == "appended\n"


def test_bind_over_existing_directory_hides_it(data):
    got = ok("ls -A /opt", mounts=[nsbox.Bind(str(data), "/opt", readonly=True)])
    assert got == "hello.txt\n"


def test_bind_into_tmp(data):
    got = ok("cat /tmp/d/hello.txt; ls -A /tmp",
             mounts=[nsbox.Bind(str(data), "/tmp/d")])
    assert got == "hello from the host\nd\n"


# -- tmpfs ----------------------------------------------------------------------------


def test_tmpfs_is_fresh_and_writable():
    got = ok("stat -f -c %T /scratch; ls -A /scratch; echo x > /scratch/f && cat /scratch/f",
             mounts=[nsbox.Tmpfs("/scratch")])
    assert got == "tmpfs\nx\n"
    assert not os.path.exists("/scratch")


def test_tmpfs_size_limit():
    r = run("head -c 3145728 /dev/zero > /scratch/big", mounts=[nsbox.Tmpfs("/scratch",
                                                                            size="1M")])
    assert r.returncode != 0
    assert "No space left on device" in r.stderr
    # Under the limit is fine.
    ok("head -c 500000 /dev/zero > /scratch/ok && wc -c < /scratch/ok",
       mounts=[nsbox.Tmpfs("/scratch", size=1 << 20)])


def test_tmpfs_size_reported():
    got = ok("df -k /scratch | tail -1", mounts=[nsbox.Tmpfs("/scratch", size="4M")])
    assert got.split()[1] == "4096"


def test_tmpfs_mode():
    got = ok("stat -c %a /scratch", mounts=[nsbox.Tmpfs("/scratch", mode=0o700)])
    assert got == "700\n"


def test_tmpfs_replaces_default_tmp():
    got = ok("df -k /tmp | tail -1", mounts=[nsbox.Tmpfs("/tmp", size="2M")])
    assert got.split()[1] == "2048"


def test_tmpfs_over_existing_dir_hides_it():
    assert ok("ls -A /etc", mounts=[nsbox.Tmpfs("/etc")]) == ""


def test_nested_mounts_in_any_order(data):
    mounts = [nsbox.Bind(str(data), "/mnt/nsbx-top/a/b", readonly=True),
              nsbox.Tmpfs("/mnt/nsbx-top")]
    got = ok("ls -A /mnt/nsbx-top; cat /mnt/nsbx-top/a/b/hello.txt", mounts=mounts)
    assert got == "a\nhello from the host\n"


# -- targets created in the sandbox's view only ------------------------------------------


def test_missing_target_under_existing_dir(data):
    name = uniq()
    before = sorted(os.listdir("/mnt"))
    got = ok("ls -A /mnt; cat /mnt/" + name + "/hello.txt",
             mounts=[nsbox.Bind(str(data), f"/mnt/{name}")])
    lines = got.splitlines()
    assert lines[-1] == "hello from the host"
    assert sorted(lines[:-1]) == sorted([*before, name])
    assert not os.path.exists(f"/mnt/{name}")
    assert sorted(os.listdir("/mnt")) == before


def test_missing_top_level_target(data):
    top = uniq("nsbx-new")
    before = sorted(os.listdir("/"))
    got = ok(f"ls -A /; echo ---; cat /{top}/sub/hello.txt",
             mounts=[nsbox.Bind(str(data), f"/{top}/sub")])
    listing, _, content = got.partition("---\n")
    assert content == "hello from the host\n"
    assert sorted(listing.split()) == sorted([*before, top])
    assert not os.path.exists(f"/{top}")
    assert sorted(os.listdir("/")) == before


def test_missing_deep_target_and_tmpfs(data):
    top = uniq("nsbx-deep")
    got = ok(f"ls -A /{top}/a/b; stat -f -c %T /{top}/t/u",
             mounts=[nsbox.Bind(str(data), f"/{top}/a/b/c"), nsbox.Tmpfs(f"/{top}/t/u")])
    assert got == "c\ntmpfs\n"
    assert not os.path.exists(f"/{top}")


def test_created_parents_stay_read_only(data):
    # The mirror that holds a new target is as read-only as what it covers.
    name = uniq()
    r = run(f"echo x > /mnt/{name}-other", mounts=[nsbox.Bind(str(data), f"/mnt/{name}")])
    assert r.returncode != 0 and "Read-only file system" in r.stderr


def test_a_new_target_under_a_read_write_bind_keeps_it_honest(data, tmp_path):
    # The mirror over a read-write bind is read-only too: its entries (bound)
    # stay writable to the host, and a new entry beside them fails loudly
    # instead of going to the mirror's tmpfs and vanishing with the sandbox.
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "existing").write_text("old\n")
    name = uniq()
    r = run("echo new > /w/existing && echo fresh > /w/newfile",
            mounts=[nsbox.Bind(str(rw), "/w"), nsbox.Tmpfs(f"/w/{name}")])
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert (rw / "existing").read_text() == "new\n"
    assert sorted(os.listdir(rw)) == ["existing"]


def test_several_new_top_level_targets_leave_one_root(data):
    names = [uniq("nsbx-top") for _ in range(3)]
    got = ok("stat -c %d:%i / /..; awk '$5 == \"/\"' /proc/self/mountinfo | wc -l",
             mounts=[nsbox.Tmpfs(f"/{names[0]}"), nsbox.Bind(str(data), f"/{names[1]}/c"),
                     nsbox.Tmpfs(f"/{names[2]}")])
    root, dotdot, count = got.split()
    assert root == dotdot and count == "1"
    assert not any(os.path.exists(f"/{n}") for n in names)


def test_host_symlinks_stay_visible_beside_new_target(data):
    # /usr/lib-like entries (symlinks, dirs, files) beside a new target keep working.
    before = {e: os.path.islink(os.path.join("/", e)) for e in os.listdir("/")}
    name = uniq("nsbx-top")
    script = ('for e in /*; do if [ -L "$e" ]; then echo "L ${e#/}"; '
              'else echo "- ${e#/}"; fi; done')
    got = ok(script, mounts=[nsbox.Bind(str(data), f"/{name}")])
    inside = {line[2:]: line[0] == "L" for line in got.splitlines()}
    inside.pop(name)
    visible = {e: link for e, link in before.items() if not e.startswith(".")}
    assert inside == visible
    assert ok("ls /bin/sh /usr/bin/env", mounts=[nsbox.Bind(str(data), f"/{name}")])


def test_missing_file_target_for_file_bind(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("one\n")
    top = uniq("nsbx-file")
    assert ok(f"cat /{top}/dir/one.txt", mounts=[nsbox.Bind(str(f), f"/{top}/dir/one.txt")]) \
        == "one\n"
    assert not os.path.exists(f"/{top}")


def test_host_sees_no_new_mounts(data):
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    ok("true", mounts=[nsbox.Bind(str(data), "/mnt/nsbx-x"), nsbox.Tmpfs("/nsbx-y/z")])
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


# -- rootfs ----------------------------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path, static_probe):
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "release").write_text("tiny rootfs\n")
    exe = root / "bin" / "probe"
    exe.write_bytes(open(static_probe.path, "rb").read())
    exe.chmod(0o755)
    for p in (tmp_path, root, root / "bin", root / "etc"):
        p.chmod(0o755)
    return root


def test_rootfs_replaces_host_root(rootfs, static_probe):
    def probe(*args):
        return nsbox.run(static_probe.argv("/bin/probe", *args), rootfs=str(rootfs),
                         capture_output=True, text=True)

    r = probe("ls", "/")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["bin", "dev", "etc", "proc", "tmp"]
    assert probe("cat", "/etc/release").stdout == "tiny rootfs\n"
    for host_path in ("/usr", "/bin/sh", "/etc/passwd", "/work"):
        assert probe("exists", host_path).returncode == 1, host_path
    assert probe("exists", "/dev/null").returncode == 0
    assert probe("exists", "/proc/self").returncode == 0
    assert probe("pwd").stdout == "/\n"
    # The old root is gone: every layer stacked at / to build the view (the
    # rootfs, a mirror for each of /dev, /proc and /tmp made there) but the last.
    mounts = [line.split()[4] for line in
              probe("cat", "/proc/self/mountinfo").stdout.splitlines()]
    assert mounts.count("/") == 1, mounts
    assert not [m for m in mounts if m.startswith(("/sys", "/work", "/usr"))], mounts
    # Nothing was created in the rootfs directory on the host.
    assert sorted(os.listdir(rootfs)) == ["bin", "etc"]


def test_rootfs_with_its_own_dev_proc_and_tmp(rootfs, static_probe):
    # No mirror needed at / this time: one layer to take away, the old root.
    for d in ("dev", "proc", "tmp"):
        (rootfs / d).mkdir(mode=0o755)
    r = nsbox.run(static_probe.argv("/bin/probe", "cat", "/proc/self/mountinfo"),
                  rootfs=str(rootfs), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mounts = [line.split()[4] for line in r.stdout.splitlines()]
    assert mounts.count("/") == 1 and {"/proc", "/dev", "/tmp"} <= set(mounts), mounts
    assert not [m for m in mounts if m.startswith(("/sys", "/work", "/usr"))], mounts


def test_rootfs_with_tmp_and_binds(rootfs, static_probe):
    r = nsbox.run(["/bin/probe", "ls", "/tmp"], rootfs=str(rootfs), capture_output=True,
                  text=True)
    assert r.returncode == 0 and r.stdout == ""
    # A bind of host data into the rootfs.
    data = rootfs.parent / "extra"
    data.mkdir()
    (data / "x").write_text("extra\n")
    data.chmod(0o755)
    r = nsbox.run(static_probe.argv("/bin/probe", "cat", "/data/x"), rootfs=str(rootfs),
                  mounts=[nsbox.Bind(str(data), "/data", readonly=True)], capture_output=True,
                  text=True)
    assert r.stdout == "extra\n"
    assert sorted(os.listdir(rootfs)) == ["bin", "etc"]


def test_rootfs_missing_command_is_not_found(rootfs):
    with pytest.raises(nsbox.CommandNotFoundError):
        nsbox.run(["/bin/sh", "-c", "true"], rootfs=str(rootfs))


# -- cwd ---------------------------------------------------------------------------------


def test_cwd_defaults_to_callers_when_it_exists_inside(monkeypatch):
    monkeypatch.chdir("/usr")
    assert ok("pwd") == "/usr\n"


def test_cwd_falls_back_to_root_when_missing_inside(tmp_path, monkeypatch):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    monkeypatch.chdir(hidden)
    # A tmpfs over tmp_path hides `hidden` inside, wherever tmp_path lives.
    assert ok("pwd", mounts=[nsbox.Tmpfs(str(tmp_path))]) == "/\n"


def test_cwd_inside_a_bind(data, monkeypatch):
    monkeypatch.chdir(data)
    assert ok("pwd; cat hello.txt", mounts=[nsbox.Bind(str(data))]) == \
        f"{data}\nhello from the host\n"


def test_explicit_cwd_must_exist():
    with pytest.raises(nsbox.SandboxSetupError) as info:
        nsbox.run(["true"], cwd="/nsbx-no-such-dir")
    assert "/nsbx-no-such-dir" in str(info.value)
    assert info.value.stage == "chdir"


def test_a_dangling_symlink_target_never_creates_a_host_file(tmp_path):
    # The target is an absolute symlink to a writable host path that does not
    # exist. During setup absolute paths still resolve in the host's root:
    # nsbox must refuse rather than create the file there.
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "foo").symlink_to(host_dir / "created")
    src = tmp_path / "src.txt"
    src.write_text("x")
    with pytest.raises(nsbox.MountError):
        nsbox.run(["/bin/true"], rootfs=str(rootfs), mounts=[nsbox.Bind(str(src), "/etc/foo")])
    assert not (host_dir / "created").exists()
    assert list(host_dir.iterdir()) == []
