#!/usr/bin/env python3
"""journalgate archive benchmark (issue 4): what the per-user archive costs and how fast it
unpacks, on loopback, on this machine.

    bench/archive.py            full run (about 3 minutes)
    bench/archive.py --quick    sanity run (about 1 minute)

Needs target/release/journalgate and target/release/examples/loadgen
(`cargo build --release --example loadgen`). Cases:

 a. SMTP ingest of 20 KB plain messages (loadgen smtp, C=1 and C=32), the archive without
    users (no intake copy) and then with users (one more sealed, fsync'd copy per message
    in the same group commit): msgs/s, i.e. the price of the archive at the SMTP side.
 b. Archive drain of case a: time from the end of the C=32 run until the intake is empty;
    items/s of the background worker on plain copies (catch-all, sealed to an auditor).
 c. Journal reports: N reports with a 20 KB original, each naming 3 recipients of whom 2
    are users, sent by 8 Python smtplib threads from a trusted network: ingest msgs/s, then
    archived reports/s (first 250 to empty intake), and a check that every user got all.
 d. One 150 MB journal report (a 110 MB attachment): SMTP time, archive time, the server's
    peak RSS (VmHWM) over the whole run, and a byte-for-byte check of the archived original
    fetched over IMAP.

Prints a markdown table and writes it to bench/results/archive-results-<date>[-quick].md.
"""

import base64
import datetime
import hashlib
import imaplib
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
JG = TARGET / "release" / "journalgate"
LG = TARGET / "release" / "examples" / "loadgen"
QUICK = "--quick" in sys.argv
N_C1, N_C32, N_REPORTS = (300, 1000, 500) if QUICK else (1000, 4000, 2000)
BIG_ATTACHMENT = (20 if QUICK else 110) * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, work: Path):
        self.work = work
        self.smtp, self.imap = free_port(), free_port()
        self.config = work / "jg.toml"
        self.config.write_text(
            f'hostname = "bench.test"\ndata_dir = "{work}/data"\n'
            f'[smtp]\nlisten = ["127.0.0.1:{self.smtp}"]\n'
            f'[pop3]\nlisten = []\nlisten_tls = []\n'
            f'[imap]\nlisten = ["127.0.0.1:{self.imap}"]\nlisten_tls = []\n'
            f'[archive]\njournal_sources = ["127.0.0.0/8"]\n'
            f'[spool]\nmin_free_bytes = 0\n')
        self.proc = None

    def cli(self, *args):
        out = subprocess.run([str(JG), "--config", str(self.config), *args, "--json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def start(self):
        log = open(self.work / "serve.log", "ab")
        self.proc = subprocess.Popen([str(JG), "--config", str(self.config), "serve"],
                                     stdout=log, stderr=log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.smtp), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("journalgate did not start; see " + str(self.work / "serve.log"))

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def wait_drained(self, timeout=600) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.cli("archive", "stats")["pending"] == 0:
                return time.time()
            time.sleep(0.1)
        raise SystemExit("the archive intake did not drain")


def loadgen_smtp(server: Server, to: str, count: int, conc: int) -> dict:
    out = subprocess.run([str(LG), "smtp", "--addr", f"127.0.0.1:{server.smtp}", "--to", to,
                          "--count", str(count), "--size", "20000", "--concurrency", str(conc)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def original(i: int, size: int = 20000) -> bytes:
    head = (f"From: Alice <alice@contoso.example>\r\nTo: bob@contoso.example, carol@contoso.example,"
            f" ext@fabrikam.example\r\nSubject: report {i}\r\nMessage-ID: <bench-{i}@contoso.example>\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def journal_report(orig: bytes, msgid: str) -> bytes:
    part1 = ("Sender: alice@contoso.example\r\nSubject: bench\r\n"
             f"Message-Id: {msgid}\r\nTo: bob@contoso.example\r\nTo: carol@contoso.example\r\n"
             "To: ext@fabrikam.example\r\n").encode()
    return (b"From: Alice <alice@contoso.example>\r\nSubject: bench\r\nX-MS-Journal-Report:\r\n"
            b"Message-ID: <r@journal.report.generator>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + part1 +
            b"\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n" + orig + b"\r\n--B--\r\n")


def send_reports(server: Server, to: str, n: int, threads: int = 8) -> float:
    todo = list(range(n))
    lock = threading.Lock()

    def worker():
        s = smtplib.SMTP("127.0.0.1", server.smtp, timeout=60)
        s.ehlo("bench")
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            s.sendmail("journal@contoso.example", [to],
                       journal_report(original(i), f"<bench-{i}@contoso.example>"))
        s.quit()

    start = time.time()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return start


def imap_fetch_one(server: Server, login: str, password: str, folder: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    m = imaplib.IMAP4("127.0.0.1", server.imap)
    m.starttls(ctx)
    m.login(login, password)
    m.select(folder, readonly=True)
    _, data = m.uid("FETCH", "*", "(BODY.PEEK[])")
    m.logout()
    return data[0][1]


def main():
    for binary in (JG, LG):
        if not binary.exists():
            raise SystemExit(f"{binary} missing: cargo build --release --example loadgen")
    work = Path(tempfile.mkdtemp(prefix="jg-archivebench."))
    rows = []
    server = Server(work)
    try:
        server.start()
        mbx = server.cli("mailbox", "create")["address"]
        # a. without users: no intake copy
        off1 = loadgen_smtp(server, mbx, N_C1, 1)
        off32 = loadgen_smtp(server, mbx, N_C32, 32)
        server.cli("user", "add", "bob@contoso.example")
        server.cli("user", "add", "carol@contoso.example")
        auditor = server.cli("user", "add", "audit@contoso.example", "--auditor")
        time.sleep(2.5)  # the user list is cached for 2 s
        on1 = loadgen_smtp(server, mbx, N_C1, 1)
        server.wait_drained()
        on32 = loadgen_smtp(server, mbx, N_C32, 32)
        sent_end = time.time()
        drained = server.wait_drained()
        rows.append(("SMTP 20 KB, C=1, archive without users (no intake)", f"{off1['msgs_per_s']:.0f} msg/s"))
        rows.append(("SMTP 20 KB, C=1, archive with users (intake copy)", f"{on1['msgs_per_s']:.0f} msg/s"))
        rows.append(("SMTP 20 KB, C=32, archive without users", f"{off32['msgs_per_s']:.0f} msg/s"))
        rows.append(("SMTP 20 KB, C=32, archive with users", f"{on32['msgs_per_s']:.0f} msg/s"))
        total32 = on32["seconds"]
        rows.append((f"b. archive drain after C=32 ({N_C32} plain copies, catch-all)",
                     f"{N_C32 / (total32 + drained - sent_end):.0f} items/s end to end; "
                     f"backlog cleared {drained - sent_end:.1f} s after the last 250"))
        # c. journal reports
        before = server.cli("archive", "stats")
        start = send_reports(server, mbx, N_REPORTS)
        sent = time.time()
        drained = server.wait_drained()
        stats = server.cli("archive", "stats")
        got_bob = stats["users"]["bob@contoso.example"]["inbox"] - before["users"]["bob@contoso.example"]["inbox"]
        got_carol = stats["users"]["carol@contoso.example"]["inbox"] - before["users"]["carol@contoso.example"]["inbox"]
        ok = "all filed" if got_bob == got_carol == N_REPORTS else f"MISSING: bob {got_bob}, carol {got_carol}"
        rows.append((f"c. {N_REPORTS} journal reports (20 KB original, 2 users + 1 external), 8 senders",
                     f"SMTP {N_REPORTS / (sent - start):.0f} msg/s; archived {N_REPORTS / (drained - start):.0f} "
                     f"reports/s end to end ({ok})"))
        # d. one large report
        big = original(0, 0).replace(b"report 0", b"big").replace(b"<bench-0@", b"<big-0@")
        head, _ = big.split(b"\r\n\r\n", 1)
        head = head.replace(b"Content-Type: text/plain; charset=us-ascii",
                            b"Content-Type: multipart/mixed; boundary=\"I\"")
        att = base64.encodebytes(os.urandom(BIG_ATTACHMENT)).replace(b"\n", b"\r\n")
        big = (head + b"\r\n\r\n--I\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--I\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + att + b"--I--\r\n")
        report = journal_report(big, "<big-0@contoso.example>")
        del att
        t0 = time.time()
        s = smtplib.SMTP("127.0.0.1", server.smtp, timeout=600)
        s.sendmail("journal@contoso.example", [mbx], report)
        s.quit()
        t1 = time.time()
        t2 = server.wait_drained()
        fetched = imap_fetch_one(server, auditor["login"], auditor["password"], '"Users/bob@contoso.example/INBOX"')
        same = hashlib.sha256(fetched).digest() == hashlib.sha256(big).digest()
        rows.append((f"d. one {len(report) / 1e6:.0f} MB journal report",
                     f"SMTP {t1 - t0:.1f} s; archived {t2 - t1:.1f} s later; peak RSS of the server over "
                     f"the whole run {server.peak_rss_mb():.0f} MB; original fetched over IMAP "
                     f"{'byte-identical' if same else 'DIFFERENT'}"))
    finally:
        server.stop()
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    out = [f"# journalgate archive benchmark, {datetime.date.today()}{' (quick)' if QUICK else ''}",
           "", f"Loopback, {cpu} CPUs, `bench/archive.py{' --quick' if QUICK else ''}`.", "",
           "| case | result |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    text = "\n".join(out) + "\n"
    print(text)
    name = f"archive-results-{datetime.date.today()}{'-quick' if QUICK else ''}.md"
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / name).write_text(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
