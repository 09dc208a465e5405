#!/usr/bin/env python3
"""Crash loop: kill -9 journalgate at random moments while 4 SMTP sessions deliver journal
reports (archive users present), N times on one data directory; then restart it, let the
archive catch up, and count what an acknowledgement promised but is not there.

    python3 tests/e2e/crashloop.py 100        # the RELIABILITY.md run
    (tests/e2e/test_crash_loop.py runs 20 cycles in the test command)

Counted: acknowledged-then-lost (a 250'd report not in the gateway mailbox), corrupt (present
but different bytes), missing from the archive (a 250'd report whose original is not in the
recipient's archive INBOX), and temp files left behind. Exit 1 if any is not zero.
Loopback only; bounded in cycles and time.
"""

from __future__ import annotations

import email.utils
import imaplib
import json
import os
import poplib
import random
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "journalgate"
BOB = "bob@contoso.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def original(marker: str) -> bytes:
    return (f"From: alice@contoso.example\r\nTo: {BOB}\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@contoso.example>\r\n"
            f"Date: {email.utils.formatdate()}\r\n\r\n"
            + "crash loop body line\r\n" * 200).encode()


def report(marker: str) -> bytes:
    orig = original(marker)
    return (b"From: journal@contoso.example\r\nTo: journal@crash.test\r\n"
            b"Subject: " + marker.encode() + b"\r\nX-MS-Journal-Report:\r\n"
            b"Message-ID: <report-" + marker.encode() + b"@contoso.example>\r\n"
            b"Content-Type: multipart/mixed; boundary=jr\r\n\r\n"
            b"--jr\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            b"Sender: alice@contoso.example\r\nSubject: " + marker.encode() + b"\r\n"
            b"Message-Id: <" + marker.encode() + b"@contoso.example>\r\nTo: " + BOB.encode()
            + b"\r\n\r\n--jr\r\nContent-Type: message/rfc822\r\n\r\n" + orig
            + b"\r\n--jr--\r\n")


class Gateway:
    def __init__(self, work: Path):
        self.work = work
        self.smtp, self.pop3s, self.imaps = free_port(), free_port(), free_port()
        self.config = work / "jg.toml"
        self.config.write_text(
            f'hostname = "crash.test"\ndata_dir = "{work}/data"\n'
            f'[smtp]\nlisten = ["127.0.0.1:{self.smtp}"]\n'
            f'[pop3]\nlisten = []\nlisten_tls = ["127.0.0.1:{self.pop3s}"]\n'
            f'[imap]\nlisten = []\nlisten_tls = ["127.0.0.1:{self.imaps}"]\n'
            f'[archive]\njournal_sources = ["127.0.0.0/8"]\n'
            f'[spool]\nmin_free_bytes = 0\n[auth]\nfailure_delay_ms = 100\n')
        self.proc = None

    def cli(self, *args):
        out = subprocess.run([str(BIN), "--config", str(self.config), *args, "--json"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)

    def start(self):
        log = open(self.work / "serve.log", "ab")
        self.proc = subprocess.Popen([str(BIN), "--config", str(self.config), "serve"],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.smtp), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise SystemExit(f"journalgate did not start; see {self.work / 'serve.log'}")

    def kill9(self):
        self.proc.kill()
        self.proc.wait(30)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def deliver_until_killed(gw: Gateway, acked: dict[str, bytes], cycle: int, stop: threading.Event):
    def sender(k):
        i = 0
        while not stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", gw.smtp, timeout=10)
                s.ehlo("crash.test")
                while not stop.is_set():
                    i += 1
                    marker = f"crash-{cycle}-{k}-{i}-{os.urandom(3).hex()}"
                    msg = report(marker)
                    s.sendmail("journal@contoso.example", [gw.mailbox], msg)
                    acked[marker] = msg  # only after the 250
            except (smtplib.SMTPException, OSError):
                time.sleep(0.01)

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    return threads


def collect(gw: Gateway) -> dict[str, bytes]:
    p = poplib.POP3_SSL("127.0.0.1", gw.pop3s, context=unverified(), timeout=60)
    p.user(gw.mbx["id"])
    p.pass_(gw.mbx["password"])
    got = {}
    count, _ = p.stat()
    for n in range(1, count + 1):
        _, lines, _ = p.retr(n)
        raw = b"\r\n".join(lines) + b"\r\n"
        body = raw.split(b"\r\nFrom: journal@", 1)
        if len(body) == 2:
            msg = b"From: journal@" + body[1]
            subject = msg.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            got[subject] = msg
    p.quit()
    return got


def archived_subjects(gw: Gateway) -> set[str]:
    c = imaplib.IMAP4_SSL("127.0.0.1", gw.imaps, ssl_context=unverified(), timeout=120)
    c.login(BOB, gw.bob["password"])
    c.select("INBOX", readonly=True)
    _, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = set()
    for part in data:
        if isinstance(part, tuple):
            subjects.add(part[1].decode().split(":", 1)[1].strip())
    c.logout()
    return subjects


def run(cycles: int, seed: int | None = None, out=print) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="jg-crash-"))
    gw = Gateway(work)
    gw.mbx = gw.cli("mailbox", "create", "--name", "crash")
    gw.mailbox = gw.mbx["address"]
    gw.bob = gw.cli("user", "add", BOB)
    acked: dict[str, bytes] = {}
    started = time.monotonic()
    for cycle in range(cycles):
        gw.start()
        stop = threading.Event()
        threads = deliver_until_killed(gw, acked, cycle, stop)
        time.sleep(rng.uniform(0.1, 1.5))
        gw.kill9()
        stop.set()
        for t in threads:
            t.join(15)
    gw.start()
    deadline = time.monotonic() + 300
    while gw.cli("archive", "stats")["pending"] and time.monotonic() < deadline:
        time.sleep(0.2)
    stats = gw.cli("archive", "stats")
    got = collect(gw)
    archived = archived_subjects(gw)
    check = subprocess.run([str(BIN), "--config", str(gw.config), "check", "--json"],
                           capture_output=True, text=True)
    gw.stop()
    tmp_left = list((work / "data" / "tmp").iterdir())
    lost = [m for m in acked if m not in got]
    corrupt = [m for m in acked if m in got and got[m] != acked[m]]
    missing = [m for m in acked if m not in archived]
    result = {
        "cycles": cycles,
        "seconds": round(time.monotonic() - started, 1),
        "acknowledged": len(acked),
        "in the mailbox": len(got),
        "acknowledged then lost": len(lost),
        "corrupt": len(corrupt),
        "missing from the archive": len(missing),
        "archive pending at the end": stats["pending"],
        "temp files left": len(tmp_left),
        "check exit code": check.returncode,
    }
    out("| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in result.items()))
    result["examples"] = {"lost": lost[:5], "corrupt": corrupt[:5], "missing": missing[:5]}
    return result


def failed(result: dict) -> bool:
    return any(result[k] for k in ("acknowledged then lost", "corrupt",
                                   "missing from the archive", "temp files left",
                                   "check exit code"))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    r = run(n)
    print(json.dumps(r["examples"]))
    sys.exit(1 if failed(r) else 0)
