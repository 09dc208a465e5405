#!/usr/bin/env python3
"""Soak: journalgate at a steady SMTP rate with POP3 collection running, RSS and open files
sampled, then a burst and the recovery after it. Loopback only; stops by itself.

    python3 bench/soak.py                      # 30 min at 100 msg/s (the RELIABILITY.md run)
    python3 bench/soak.py --minutes 2 --rate 50

Prints a table (start, max, end of RSS and open files; messages sent, acknowledged, collected)
and writes it with the samples to bench/results/soak-<date>.md. Every acknowledged message
must be collected exactly once; the exit code is 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import poplib
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(i: int, size: int) -> bytes:
    head = (f"From: alice@contoso.example\r\nTo: bob@contoso.example\r\n"
            f"Subject: soak {i}\r\nMessage-ID: <soak-{i}@contoso.example>\r\n\r\n").encode()
    line = b"s" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class Gateway:
    def __init__(self, work: Path):
        self.work = work
        self.smtp, self.pop3s = free_port(), free_port()
        self.config = work / "jg.toml"
        self.config.write_text(
            f'hostname = "soak.test"\ndata_dir = "{work}/data"\n'
            f'[smtp]\nlisten = ["127.0.0.1:{self.smtp}"]\n'
            f'[pop3]\nlisten = []\nlisten_tls = ["127.0.0.1:{self.pop3s}"]\n'
            f'[imap]\nlisten = []\nlisten_tls = []\n'
            f'[spool]\nmin_free_bytes = 0\n[auth]\nfailure_delay_ms = 200\n')
        self.proc = None

    def cli(self, *args):
        out = subprocess.run([str(JG), "--config", str(self.config), *args, "--json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def start(self):
        log = open(self.work / "serve.log", "ab")
        self.proc = subprocess.Popen([str(JG), "--config", str(self.config), "serve"],
                                     stdout=log, stderr=log)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.smtp), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("journalgate did not start")

    def sample(self) -> tuple[float, int]:
        rss = 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return rss / 1024, fds

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


class Sender:
    """Sends messages at `rate` per second over a few reused SMTP sessions."""

    def __init__(self, gw: Gateway, to: str, size: int):
        self.gw, self.to, self.size = gw, to, size
        self.next, self.acked, self.refused = 0, set(), 0
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            self.next += 1
            return self.next

    def run(self, rate: float, until: float, threads: int = 4):
        per_thread = rate / threads

        def worker():
            s = smtplib.SMTP("127.0.0.1", self.gw.smtp, timeout=60)
            s.ehlo("soak.test")
            start, sent = time.monotonic(), 0
            while time.monotonic() < until:
                due = start + sent / per_thread
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
                i = self.take()
                try:
                    s.sendmail("journal@contoso.example", [self.to], message(i, self.size))
                    with self.lock:
                        self.acked.add(i)
                except smtplib.SMTPException:
                    with self.lock:
                        self.refused += 1
                    s.close()
                    s = smtplib.SMTP("127.0.0.1", self.gw.smtp, timeout=60)
                    s.ehlo("soak.test")
                sent += 1
            s.quit()

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


def collect(gw: Gateway, mbx: dict, seen: dict[int, int]) -> int:
    """One archiver poll: download and delete everything; counts each message by its number."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    p = poplib.POP3_SSL("127.0.0.1", gw.pop3s, context=ctx, timeout=60)
    p.user(mbx["id"])
    p.pass_(mbx["password"])
    count, _ = p.stat()
    for n in range(1, count + 1):
        _, lines, _ = p.retr(n)
        for line in lines:
            if line.startswith(b"Subject: soak "):
                i = int(line.split()[-1])
                seen[i] = seen.get(i, 0) + 1
                break
        p.dele(n)
    p.quit()
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--size", type=int, default=20_000)
    ap.add_argument("--burst", type=int, default=5000, help="messages sent at full speed at the end")
    args = ap.parse_args()
    if not JG.exists():
        raise SystemExit(f"{JG} missing: cargo build --release")
    work = Path(tempfile.mkdtemp(prefix="jg-soak-"))
    gw = Gateway(work)
    gw.start()
    mbx = gw.cli("mailbox", "create", "--name", "soak")
    to = mbx["address"]
    sender = Sender(gw, to, args.size)
    seen: dict[int, int] = {}
    samples = []
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    stop = threading.Event()

    def collector():
        while not stop.is_set():
            try:
                collect(gw, mbx, seen)
            except (OSError, poplib.error_proto) as e:
                print(f"collection failed: {e}", file=sys.stderr)
            stop.wait(5)

    def sampler():
        while not stop.is_set():
            rss, fds = gw.sample()
            samples.append((time.monotonic() - t0, rss, fds, len(sender.acked)))
            stop.wait(10)

    threads = [threading.Thread(target=collector), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    sender.run(args.rate, until)
    steady_end = gw.sample()
    steady_samples = len(samples)
    # burst: as fast as 8 sessions go, then quiet, and RSS must come back down
    burst_until = time.monotonic() + 600
    burst = Sender(gw, to, args.size)
    burst.next = sender.next + 1_000_000
    done = threading.Event()

    def burst_run():
        while len(burst.acked) < args.burst and time.monotonic() < burst_until:
            burst.run(10_000, time.monotonic() + 0.5, threads=8)
        done.set()

    bt = threading.Thread(target=burst_run)
    bt.start()
    bt.join()
    burst_peak = max(s[1] for s in samples[steady_samples:] or samples)
    time.sleep(30)
    after_burst = gw.sample()
    stop.set()
    for t in threads:
        t.join()
    collect(gw, mbx, seen)
    final = gw.sample()
    gw.stop()

    acked = sender.acked | burst.acked
    lost = [i for i in acked if i not in seen]
    dup = [i for i, n in seen.items() if n > 1]
    rss = [s[1] for s in samples[:steady_samples] or samples]
    fds = [s[2] for s in samples]
    rows = [
        ("duration", f"{args.minutes:g} min at {args.rate:g} msg/s ({args.size} B), then "
                     f"{len(burst.acked)} messages at full speed"),
        ("messages acknowledged", f"{len(acked)} ({sender.refused + burst.refused} refused)"),
        ("collected (POP3 every 5 s, deleted)", f"{len(seen)}; lost {len(lost)}, "
                                                 f"collected twice {len(dup)}"),
        ("RSS MB start / max / end of steady run", f"{rss[0]:.1f} / {max(rss):.1f} / "
                                                    f"{steady_end[0]:.1f}"),
        ("RSS MB at burst peak (sampled) / 30 s after / final",
         f"{burst_peak:.1f} / {after_burst[0]:.1f} / {final[0]:.1f}"),
        ("open files start / max / end", f"{fds[0]} / {max(fds)} / {final[1]}"),
    ]
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    out = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y-%m-%d')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = (f"# Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"Command: `python3 bench/soak.py {' '.join(sys.argv[1:])}`\n\n{table}\n"
            "Samples (seconds, RSS MB, open files, acknowledged so far):\n\n```\n"
            + "\n".join(f"{t:7.0f} {r:7.1f} {f:5d} {a:8d}" for t, r, f, a in samples)
            + "\n```\n")
    out.write_text(body)
    print(f"written to {out}")
    sys.exit(1 if lost or dup else 0)


if __name__ == "__main__":
    main()
