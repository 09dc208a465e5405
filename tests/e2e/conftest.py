"""pytest fixtures for the journalgate end-to-end suite.

`gw`        a running gateway with default test config (function scope).
`make_gw`   factory: make_gw(overrides={...}, start=True, data_dir=None) -> Gateway.
`tmpfs_dir` a 4 MB tmpfs mount, `tmpfs48` a 48 MB one (root only; skip when not permitted).
`maildir_for_getmail`  (Maildir, deliver-as user or None) for jgharness.run_getmail.

The Gateway class and client helpers live in jgharness.py (imported by the tests).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jgharness import BIN, Gateway  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still runs by default)")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture(scope="session", autouse=True)
def _binary_present():
    if not BIN.exists():
        pytest.exit(f"{BIN} does not exist: run `cargo build --release` first", returncode=3)


@pytest.fixture
def make_gw(tmp_path, request):
    gws: list[Gateway] = []

    def factory(overrides: dict | None = None, start=True, data_dir=None, **kw) -> Gateway:
        ov = dict(overrides or {})
        ov.update(kw)
        g = Gateway(tmp_path / f"gw{len(gws)}", ov, data_dir=data_dir)
        gws.append(g)
        if start:
            g.start()
        return g

    yield factory

    failed = _failed(request)
    problems = []
    for g in gws:
        try:
            g.stop()
        except Exception as e:  # still print the log below
            problems.append(f"{g.base}: {e}")
            g.kill9()
        if failed or problems:
            print(f"\n##### {g.base} ports={g.ports}")
            print(g.log_tail(80))
    if problems:
        pytest.fail("teardown: " + "; ".join(problems))


@pytest.fixture
def gw(make_gw):
    return make_gw()


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str):
    """A tmpfs of `size` mounted at `where` (root only; skips when not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {p.stderr.strip()}")
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(Exception):
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tmpfs_dir(tmp_path):
    """A 4 MB tmpfs mounted under tmp_path; unmounted in teardown. Request this
    fixture BEFORE make_gw/gw so the server is stopped before the unmount."""
    with mounted_tmpfs(tmp_path / "tmpfs", "4m") as mnt:
        yield mnt


@pytest.fixture
def tmpfs48(tmp_path):
    """Like tmpfs_dir, 48 MB (the full-disk tests)."""
    with mounted_tmpfs(tmp_path / "tmpfs48", "48m") as mnt:
        yield mnt


@pytest.fixture
def maildir_for_getmail():
    """A Maildir getmail may deliver into: (path, user to deliver as or None). getmail
    refuses to deliver as root, so when we are root it delivers as `nobody` into a
    directory nobody can write."""
    base = Path(tempfile.mkdtemp(prefix="jg-getmail-"))
    md = base / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        pw = pwd.getpwnam(user)
        base.chmod(0o755)
        for d in (md, md / "cur", md / "new", md / "tmp"):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    yield md, user
    shutil.rmtree(base, ignore_errors=True)
