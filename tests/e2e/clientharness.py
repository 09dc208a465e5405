"""Helpers for driving real mail clients in tests: finding them, and neomutt under tmux."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def need(exe):
    path = shutil.which(exe)
    assert path, f"{exe} is not installed (tests/run.sh installs it)"
    return path


def lf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n")


class Tmux:
    """A private tmux server with one session, `jg`, whose screen tests read."""

    def __init__(self, sock: Path):
        self.exe = need("tmux")
        self.sock = str(sock)

    def run(self, *args, check=True):
        p = subprocess.run([self.exe, "-S", self.sock, *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        if check:
            assert p.returncode == 0, (args, p.stderr)
        return p

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "jg", check=False).stdout

    def keys(self, *keys):
        self.run("send-keys", "-t", "jg", *keys)

    def wait_for(self, pred, what, timeout=20.0, on_screen=None):
        deadline = time.monotonic() + timeout
        s = ""
        while time.monotonic() < deadline:
            s = self.screen()
            if on_screen:
                on_screen(s)
            if pred(s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{s}")

    def accept_cert(self, s: str):
        """An `on_screen` callback that accepts neomutt's certificate prompt once."""
        if "(o)nce" in s or "ccept once" in s:
            self.keys("o")

    def kill(self):
        self.run("kill-server", check=False)


def start_neomutt(tmp_path: Path, folder: str, user: str, password: str, cert_pem: str,
                  extra: str = "") -> Tmux:
    """Starts neomutt in tmux on `folder` (an imaps:// URL) with the test muttrc; the shell
    prints NEOMUTT-EXITED-<status> when it quits."""
    neomutt = need("neomutt")
    home = tmp_path / "home"
    home.mkdir()
    certs = home / "certs.pem"
    certs.write_text(cert_pem)
    rc = home / "muttrc"
    rc.write_text(
        f'set folder = "{folder}"\n'
        'set spoolfile = "+INBOX"\n'
        f'set imap_user = "{user}"\n'
        f'set imap_pass = "{password}"\n'
        f'set certificate_file = "{certs}"\n'
        "set ssl_verify_host = no\n"
        "set ssl_verify_dates = no\n"
        'set header_cache = ""\n'
        'set message_cachedir = ""\n'
        "set move = no\n"
        "set delete = yes\n"
        "set quit = yes\n"
        "set mark_old = no\n"
        "set sort = mailbox-order\n"
        "set wait_key = no\n"
        "set sleep_time = 0\n"
        "set timeout = 1\n"
        "set beep = no\n"
        "set pager_index_lines = 0\n"
        "set pager_stop = yes\n"
        "set resolve = no\n"
        "set confirmappend = no\n"
        'set index_format = "%4C %Z %s"\n'
        + extra
    )
    tm = Tmux(tmp_path / "tmux.sock")
    cmd = (f"env HOME={home} TERM=xterm {neomutt} -n -F {rc}; "
           "echo NEOMUTT-EXITED-$?; sleep 120")
    tm.run("new-session", "-d", "-s", "jg", "-x", "160", "-y", "40", cmd)
    return tm
