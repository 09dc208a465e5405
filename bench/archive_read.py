#!/usr/bin/env python3
"""The measuring half of bench/archive-read.sh (reading the archive at scale); run by it.

    archive_read.py gen     --dir D [--seed S]
        Writes the journal-report templates D/tNNN.eml (each `{n}` is replaced by loadgen's
        counter) and D/templates.json (what each one holds, the word absent from all).
    archive_read.py plan    --dir D --from K --to N [--users]
        Prints `file counter_start count` lines: the loadgen runs that take the archive's
        `Unknown Addresses` folder from K to N reports (with --users: the reports that name
        the one ordinary archive user, alice, 2 % of N on top, filed in her Sent folder).
    archive_read.py maildir --dir D --maildir M --from K --to N [--owner nobody]
        Writes the originals of reports K..N-1 (byte-identical to what the archive files:
        the message/rfc822 part of each report) into M/cur, one file each, unique names.
    archive_read.py measure ... (see `measure --help`)
        Both servers over IMAP with STARTTLS: warm-up, then LOGIN+SELECT, FETCH and SEARCH
        timings (median of --repeat), counts checked against each other and the templates,
        server CPU, server RSS; writes one JSON file.
    archive_read.py table   --in A.json [--in B.json ...]
        Markdown tables of `measure` results.

Message content: 100 templates of originals (each ~14-22 KB) between external addresses
(nobody in them is an archive user, so the archive files them in the auditor's `Unknown
Addresses`), of four shapes: text + base64 attachment, multipart/alternative text + HTML,
base64-encoded UTF-8 text + attachment, and one quoted-printable text part with quoted
replies. Every report's counter `{n}` makes its Subject and Message-ID unique. The word
"quarterly" is in the Subject of one template (1 % of the reports) and in the body only of
three more (one of them visible only once the base64 text part is decoded).
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import os
import random
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BASE = 10_000_000        # counter of template i's report j: BASE + i * STRIDE + j (8 digits)
STRIDE = 100_000         # at most this many reports per template (N up to 10,000,000)
T_UNKNOWN = 100          # templates filed in Unknown Addresses
T_USER = 2               # templates naming alice@contoso.example (her Sent folder)
USER_SHARE = 50          # N // USER_SHARE reports of the alice templates on top of N
WORD = "quarterly"
SUBJECT_Q = 37           # the template with WORD in its Subject
BODY_Q = {12: "alt", 58: "b64text", 83: "qp"}   # WORD in the body only (kind forced)

# --------------------------------------------------------------------------- content

WORDS = """
account accounts action agenda agreement allocation analysis annual approval approve april
archive arrangement assessment asset assets attached audit august availability balance bank
baseline benchmark billing board booking branch briefing budget build business calendar call
campaign capacity capital carrier case cash catalogue change channel check claim client
clients closing committee compliance conference confirm contract contracts cost costs counsel
credit customer customers data deadline december decision delivery demand department deposit
design detail details development director discount discussion distribution document draft
due estimate event expense expenses export facility february figures file filing final
finance financial fiscal follow forecast framework freight friday funding goal growth guidance
headcount hiring holiday income increase inventory invoice invoices issue issues item january
july june launch lease ledger legal license limit logistics margin market marketing march
material may meeting memo migration milestone monday monthly notice november number october
offer office onboarding operations order orders outline overview partner partners payment
payroll pending pension percent period permit plan planning policy portfolio position pricing
priority process procurement product production profit program project proposal purchase
quality quote rate receipt reconciliation record records region regional release renewal
report request requirement resource resources response revenue review risk roadmap rollout
salary sales schedule scope security segment september service services settlement shipment
shipping signature site software source staff statement status stock strategy summary
supplier suppliers supply support survey system target tax team template tender terms thursday
ticket timeline total training transfer travel treasury trial tuesday update upgrade vendor
vendors version volume warehouse wednesday weekly workshop year
please kindly could would should will can may need needs let know see find share send sent
attach review confirm check update discuss align prepare finalise approve sign schedule move
the the the the a a a an of of of to to to and and and in in for for on on with with by at
from as is is are was be been this that these those our your their we you they it its
before after during until next last current previous early late new revised updated
""".split()
FIRST = ("Anna Ben Carla David Elena Felix Greta Hugo Ines Jonas Karin Lars Mira Nils Olga "
         "Pavel Rosa Sven Tanja Uwe Vera Walter Yusuf Zoe Amir Beatriz Chen Dmitri Emeka Fatima "
         "Goran Hana Ivan Julia Kenji Leila Marco Nadia Omar Priya").split()
LAST = ("Novak Berg Costa Dubois Eriksen Fischer Garcia Horvat Ito Jansen Kowalski Lindqvist "
        "Moreau Nakamura Oliveira Petrov Rossi Schmidt Tanaka Ueda Varga Weber Yilmaz Zhang "
        "Andersen Brandt Castillo Dvorak Engel Fontaine").split()
DOMAINS = ("fabrikam.example northwind.example adatum.example litware.example "
           "tailspin.example woodgrove.example wingtip.example proseware.example "
           "lucerne.example margie.example fourthcoffee.example alpineski.example").split()
TOPICS = ("Budget review", "Invoice", "Contract renewal", "Shipment delay", "Meeting notes",
          "Supplier onboarding", "Pricing update", "Project status", "Audit request",
          "Travel approval", "Purchase order", "Customer escalation", "Release plan",
          "Training schedule", "Lease agreement", "Headcount plan", "Tender documents",
          "Payment reminder", "Board briefing", "Warehouse inventory")
QUALIFIERS = ("for the northern region", "next steps", "action required", "follow-up",
              "draft for comments", "final version", "updated figures", "please confirm",
              "for approval", "open items", "revised schedule", "with attachments")
NONASCII = ["Müller", "Søren", "José", "Łukasz", "Zoë", "Jürgen", "François", "Øyvind"]


def person(rng):
    f, l = rng.choice(FIRST), rng.choice(LAST)
    return f"{f} {l}", f"{f.lower()}.{l.lower()}@{rng.choice(DOMAINS)}"


def sentence(rng, lo=7, hi=18):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice(".....?!")


def paragraphs(rng, target, extra=None, nonascii=False):
    """Prose of about `target` characters; `extra` sentences are put in at random places."""
    paras, size = [], 0
    while size < target:
        p = [sentence(rng) for _ in range(rng.randint(3, 7))]
        if nonascii and rng.random() < 0.3:
            p.insert(rng.randint(0, len(p)), f"Regards from {rng.choice(NONASCII)}.")
        text = " ".join(p)
        paras.append(text)
        size += len(text) + 2
    for e in extra or []:
        k = rng.randrange(len(paras))
        paras[k] = paras[k] + " " + e
    return paras


def wrap(text, width=72):
    lines, cur = [], ""
    for w in text.split(" "):
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        lines.append(cur)
    return lines


def crlf(lines):
    return "".join(l + "\r\n" for l in lines)


def b64_lines(data: bytes):
    enc = base64.b64encode(data).decode()
    return [enc[i:i + 76] for i in range(0, len(enc), 76)]


def qp_encode_line(line: str) -> str:
    out = []
    for ch in line:
        if ch == "=" or ord(ch) > 126:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def fold_addresses(field, people):
    parts = [f"{n} <{a}>" for n, a in people]
    out, cur = [], f"{field}: "
    for i, p in enumerate(parts):
        piece = p + ("," if i < len(parts) - 1 else "")
        if len(cur) + len(piece) > 76 and cur.strip() != f"{field}:":
            out.append(cur.rstrip())
            cur = "\t"
        cur += piece + " "
    out.append(cur.rstrip())
    return out


def make_template(i, rng, kind, user=False):
    """One template: (report text with {n}, original text with {n}, metadata)."""
    target = rng.randint(14000, 22000)
    sender = ("Alice Example", "alice@contoso.example") if user else person(rng)
    to = [person(rng) for _ in range(rng.randint(1, 3))]
    cc = [person(rng) for _ in range(rng.randint(0, 3))]
    bcc = [person(rng)] if rng.random() < 0.2 else []
    prefix = rng.choice(["", "", "", "Re: ", "RE: ", "Fwd: ", "AW: "])
    topic = "Quarterly results" if i == SUBJECT_Q else rng.choice(TOPICS)
    subject = f"{prefix}{topic} {rng.choice(QUALIFIERS)} [{rng.choice('ABCDEFGH')}{{n}}]"
    if i % 17 == 5 and i != SUBJECT_Q:     # a few RFC 2047 subjects
        subject = f"=?utf-8?q?Besprechung_mit_M=C3=BCller?= {topic} [{{n}}]"
    day = 1 + i % 28
    date = (f"{['Mon', 'Tue', 'Wed', 'Thu', 'Fri'][i % 5]}, {day:02d} "
            f"{['Sep', 'Oct', 'Nov'][i % 3]} 2026 {8 + i % 10:02d}:{(i * 7) % 60:02d}:"
            f"{(i * 13) % 60:02d} +0{i % 3}00")
    dom = sender[1].split("@")[1]
    msgid = f"<{{n}}.{i:03d}.{rng.getrandbits(32):08x}@{dom}>"
    extra = [f"The {WORD} numbers are in the attached summary."] if i in BODY_Q else None
    ib = f"_000_{rng.getrandbits(48):012x}_bench_"

    head = [f"From: {sender[0]} <{sender[1]}>"]
    head += fold_addresses("To", to)
    if cc:
        head += fold_addresses("Cc", cc)
    head += [f"Subject: {subject}", f"Date: {date}", f"Message-ID: {msgid}"]
    if rng.random() < 0.5:
        head.append(f"Thread-Index: {base64.b64encode(rng.randbytes(22)).decode()}")
    head += ["Content-Language: en-US", "MIME-Version: 1.0"]

    body = []
    attach_name = rng.choice(["figures.xlsx", "contract.pdf", "minutes.docx", "scan.pdf",
                              "export.csv.gz", "slides.pptx"])
    attach_type = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                   "pdf": "application/pdf", "docx": "application/msword",
                   "gz": "application/gzip", "pptx": "application/vnd.ms-powerpoint"}[
        attach_name.rsplit(".", 1)[1]]

    def attachment(room):
        raw = rng.randbytes(max(300, room * 57 // 78))
        return ([f"--{ib}", f'Content-Type: {attach_type}; name="{attach_name}"',
                 f'Content-Description: {attach_name}',
                 f'Content-Disposition: attachment; filename="{attach_name}"; size={len(raw)}',
                 "Content-Transfer-Encoding: base64", ""] + b64_lines(raw))

    if kind == "attach":
        head.append(f'Content-Type: multipart/mixed; boundary="{ib}"')
        text = [l for p in paragraphs(rng, rng.randint(2000, 5000), extra) for l in wrap(p) + [""]]
        body += [f"--{ib}", 'Content-Type: text/plain; charset="us-ascii"',
                 "Content-Transfer-Encoding: 7bit", ""] + text
        room = target - len(crlf(head + body)) - 400
        body += attachment(room) + [f"--{ib}--"]
    elif kind == "alt":
        head.append(f'Content-Type: multipart/alternative; boundary="{ib}"')
        paras = paragraphs(rng, target // 2 - 600, extra)
        text = [l for p in paras for l in wrap(p) + [""]]
        html = ['<html><head><meta http-equiv="Content-Type" content="text/html; charset=us-ascii">',
                "</head><body>"]
        for p in paras:
            html += wrap(f"<p class=\"MsoNormal\">{p}</p>", 76)
        html += ["</body></html>"]
        body += [f"--{ib}", 'Content-Type: text/plain; charset="us-ascii"',
                 "Content-Transfer-Encoding: 7bit", ""] + text
        body += [f"--{ib}", 'Content-Type: text/html; charset="us-ascii"',
                 "Content-Transfer-Encoding: 7bit", ""] + html + ["", f"--{ib}--"]
    elif kind == "b64text":
        head.append(f'Content-Type: multipart/mixed; boundary="{ib}"')
        paras = paragraphs(rng, rng.randint(3000, 6000), extra, nonascii=True)
        plain = crlf([l for p in paras for l in wrap(p) + [""]]).encode("utf-8")
        body += [f"--{ib}", 'Content-Type: text/plain; charset="utf-8"',
                 "Content-Transfer-Encoding: base64", ""] + b64_lines(plain) + [""]
        room = target - len(crlf(head + body)) - 400
        body += attachment(room) + [f"--{ib}--"]
    elif kind == "qp":
        head += ['Content-Type: text/plain; charset="utf-8"',
                 "Content-Transfer-Encoding: quoted-printable"]
        paras = paragraphs(rng, target - 1500, extra, nonascii=True)
        depth = 0
        for k, p in enumerate(paras):
            if k and k % 3 == 0:
                depth = min(depth + 1, 3)
                body += ["", f"On {date}, {rng.choice(FIRST)} {rng.choice(LAST)} wrote:"]
            q = "> " * depth
            body += [qp_encode_line(q + l) for l in wrap(p, 64 - 2 * depth)] + [q.rstrip()]
    else:
        raise ValueError(kind)

    original = crlf(head) + "\r\n" + crlf(body)
    jb = f"_jgbench_report_{i:03d}_"
    rep = [f"From: {sender[0]} <{sender[1]}>"]
    rep += fold_addresses("To", to)
    rep += [f"Subject: {subject}", "MIME-Version: 1.0",
            "Sender:\r\n\tMicrosoft Exchange Online <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>",
            f"Message-ID: <journal-{{n}}-{i:03d}@journal.report.generator>", f"Date: {date}",
            "X-MS-Journal-Report:", f"X-MS-Exchange-Parent-Message-Id: {msgid}",
            "Auto-Submitted: auto-generated",
            "X-MS-Exchange-Generated-Message-Source: Journal Agent",
            f'Content-Type: multipart/mixed;\r\n\tboundary="{jb}"', "",
            f"--{jb}", 'Content-Type: text/plain; charset="us-ascii"',
            "Content-Transfer-Encoding: 7bit", "",
            f"Sender: {sender[1]}", f"Subject: {subject}", f"Message-Id: {msgid}"]
    rep += [f"To: {a}" for _, a in to] + [f"Cc: {a}" for _, a in cc] + [f"Bcc: {a}" for _, a in bcc]
    rep += ["", f"--{jb}", "Content-Type: message/rfc822", ""]
    report = crlf(rep) + original + f"\r\n--{jb}--\r\n"
    meta = {"index": i, "kind": kind, "user": user, "subject_word": WORD in subject.lower(),
            "original_bytes": len(original.encode("utf-8")), "report_bytes": len(report.encode("utf-8"))}
    return report, original, meta


def decoded_views(original: bytes):
    """The original as IMAP TEXT may see it: raw, plus every base64 / QP body decoded."""
    views = [original]
    for m in re.finditer(rb"Content-Transfer-Encoding: base64\r\n\r\n((?:[A-Za-z0-9+/=]+\r\n)+)", original):
        views.append(base64.b64decode(m.group(1).replace(b"\r\n", b"")))
    if b"quoted-printable" in original:
        import quopri
        views.append(quopri.decodestring(original))
    return views


def cmd_gen(a):
    rng = random.Random(a.seed)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    kinds = ["attach"] * 50 + ["alt"] * 30 + ["b64text"] * 10 + ["qp"] * 10
    rng.shuffle(kinds)
    metas = []
    while True:   # a word of 10 random letters found in no template (raw or decoded)
        absent = "zx" + "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(8))
        if absent not in WORDS:
            break
    for i in range(T_UNKNOWN + T_USER):
        user = i >= T_UNKNOWN
        kind = BODY_Q.get(i, kinds[i % len(kinds)])
        report, original, meta = make_template(i, rng, kind, user=user)
        rb, ob = report.encode("utf-8"), original.encode("utf-8")
        assert report.count(original) == 1
        low = [v.lower() for v in decoded_views(ob)]
        meta["text_word"] = any(WORD.encode() in v for v in low)
        meta["absent_found"] = any(absent.encode() in v for v in low)
        assert not meta["absent_found"], absent
        assert meta["text_word"] == (meta["subject_word"] or i in BODY_Q), (i, meta)
        (d / f"t{i:03d}.eml").write_bytes(rb)
        (d / f"o{i:03d}.eml").write_bytes(ob)
        meta["file"] = str(d / f"t{i:03d}.eml")
        metas.append(meta)
    info = {"seed": a.seed, "base": BASE, "stride": STRIDE, "t_unknown": T_UNKNOWN,
            "t_user": T_USER, "user_share": USER_SHARE, "word": WORD, "absent": absent,
            "templates": metas}
    (d / "templates.json").write_text(json.dumps(info, indent=1))
    sizes = [m["report_bytes"] for m in metas]
    osz = [m["original_bytes"] for m in metas]
    kinds_n = {k: sum(1 for m in metas if m["kind"] == k) for k in ("attach", "alt", "b64text", "qp")}
    summary = (f"{len(metas)} templates ({kinds_n['attach']} text + base64 attachment, {kinds_n['alt']} text + HTML "
               f"alternative, {kinds_n['b64text']} base64 UTF-8 text + attachment, {kinds_n['qp']} quoted-printable "
               f"text), journal reports of {round(statistics.mean(sizes)):,} bytes on average, originals "
               f"{min(osz):,}..{max(osz):,} bytes (mean {round(statistics.mean(osz)):,}); "
               f"the absent word: {absent}")
    print(json.dumps({"templates": len(metas), "report_bytes_mean": round(statistics.mean(sizes)),
                      "original_bytes_mean": round(statistics.mean(osz)),
                      "original_bytes_min": min(osz), "original_bytes_max": max(osz),
                      "absent": absent, "summary": summary}))


def share(total, parts, i):
    return total // parts + (1 if i < total % parts else 0)


def counters(i, lo, hi):
    """Counters of template i's reports number lo..hi-1."""
    return range(BASE + i * STRIDE + lo, BASE + i * STRIDE + hi)


def plan(frm, to, users):
    """[(template, first counter, count)] taking Unknown Addresses from frm to to reports."""
    out = []
    for i in range(T_UNKNOWN):
        lo, hi = share(frm, T_UNKNOWN, i), share(to, T_UNKNOWN, i)
        if hi > lo:
            out.append((i, counters(i, lo, hi).start, hi - lo))
    if users:
        for k in range(T_USER):
            lo = share(frm // USER_SHARE, T_USER, k)
            hi = share(to // USER_SHARE, T_USER, k)
            if hi > lo:
                i = T_UNKNOWN + k
                out.append((i, counters(i, lo, hi).start, hi - lo))
    return out


def cmd_plan(a):
    if a.to > T_UNKNOWN * STRIDE:
        sys.exit(f"at most {T_UNKNOWN * STRIDE} reports")
    d = Path(a.dir)
    for i, first, count in plan(a.frm, a.to, a.users):
        print(f"{d / f't{i:03d}.eml'} {first} {count}")


def cmd_maildir(a):
    d, m = Path(a.dir), Path(a.maildir)
    for sub in ("cur", "new", "tmp"):
        (m / sub).mkdir(parents=True, exist_ok=True)
    uid = gid = None
    if a.owner:
        import pwd
        pw = pwd.getpwnam(a.owner)
        uid, gid = pw.pw_uid, pw.pw_gid
    t0 = time.monotonic()
    n_files, n_bytes = 0, 0
    base_time = 1790000000
    for i in range(T_UNKNOWN):
        pieces = (d / f"o{i:03d}.eml").read_bytes().split(b"{n}")
        lo, hi = share(a.frm, T_UNKNOWN, i), share(a.to, T_UNKNOWN, i)
        for c in counters(i, lo, hi):
            data = str(c).encode().join(pieces)
            p = m / "cur" / f"{base_time + c - BASE}.M{c}P{i}.archivebench:2,"
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                if uid is not None:
                    os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
            n_files += 1
            n_bytes += len(data)
    if uid is not None:
        for p in [m, m / "cur", m / "new", m / "tmp"]:
            os.chown(p, uid, gid)
    print(json.dumps({"files": n_files, "bytes": n_bytes, "seconds": round(time.monotonic() - t0, 3)}))


# --------------------------------------------------------------------------- measuring

HZ = os.sysconf("SC_CLK_TCK")


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError):
        return 0


def proc_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(root):
    """root and all its descendants (from /proc)."""
    parent = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    s = f.read()
                parent[int(e)] = int(s[s.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    out, todo = {root}, [root]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return sorted(out)


class Sampler(threading.Thread):
    """Every 0.1 s the RSS (kB) of each server's processes; peak per label."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pids = {}          # server -> [pids]
        self.label = None
        self.peak = {}          # (server, label) -> kB
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            label = self.label
            if label is None:
                continue
            for srv, pids in list(self.pids.items()):
                kb = sum(proc_kb(p, "VmRSS:") for p in pids)
                k = (srv, label)
                if kb > self.peak.get(k, 0):
                    self.peak[k] = kb


class Server:
    def __init__(self, name, hostport, user, password, folder, pid=None, master=None):
        self.name, self.user, self.password, self.folder = name, user, password, folder
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.pid, self.master = pid, master
        self.conn = None
        self.tag = 0

    def pids(self):
        if self.pid:
            return [self.pid]
        return tree(self.master) if self.master else []

    def cpu(self):
        return sum(proc_ticks(p) for p in self.pids()) / HZ

    def rss_pids(self):
        """The processes whose memory is reported: journalgate's one; Dovecot's imap and
        imap-login (not the master, config, log, auth and anvil processes)."""
        if self.pid:
            return [self.pid]
        out = []
        for p in self.pids():
            try:
                if Path(f"/proc/{p}/comm").read_text().strip() in ("imap", "imap-login"):
                    out.append(p)
            except OSError:
                pass
        return out

    def connect(self, timeout):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        t = [time.perf_counter()]
        c = imaplib.IMAP4(self.host, self.port, timeout=timeout)
        c.starttls(ssl_context=ctx)
        t.append(time.perf_counter())
        c.login(self.user, self.password)
        t.append(time.perf_counter())
        try:
            typ, data = c.select(quote(self.folder))
        except c.readonly:
            # SELECT answered [READ-ONLY] (the archive always does); imaplib raises after
            # the answer has been read and the state set
            c.is_readonly = True      # so that imaplib does not raise again at LOGOUT
            typ, data = c._untagged_response("OK", [None], "EXISTS")
        t.append(time.perf_counter())
        if typ != "OK":
            raise RuntimeError(f"{self.name}: SELECT {self.folder}: {typ} {data}")
        exists = int(data[0])
        return c, exists, {"connect_starttls": t[1] - t[0], "login": t[2] - t[1],
                           "select": t[3] - t[2], "login_select": t[3] - t[1]}

    def command(self, cmd: bytes, sink=None):
        """Sends one command on the selected connection and reads to its tagged answer:
        (number of `* n FETCH` responses, SEARCH hits, bytes read). Literal-aware; no
        parsing beyond that (imaplib's own parser would cost the client ~1 s per 10,000
        responses and count against both servers)."""
        self.tag += 1
        tag = b"R%05d" % self.tag
        c = self.conn
        c.send(tag + b" " + cmd + b"\r\n")
        f = c.file
        fetches, hits, nbytes = 0, [], 0
        lit = re.compile(rb"\{(\d+)\}\r\n$")
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError(f"{self.name}: connection closed during {cmd!r}")
            nbytes += len(line)
            first = line
            while True:
                m = lit.search(line)
                if not m:
                    break
                data = f.read(int(m.group(1)))
                nbytes += len(data)
                if sink is not None:
                    sink.append(data)
                line = f.readline()
                nbytes += len(line)
            if first.startswith(tag + b" "):
                if not first.startswith(tag + b" OK"):
                    raise RuntimeError(f"{self.name}: {cmd!r}: {first!r}")
                return fetches, hits, nbytes
            if first.startswith(b"* "):
                parts = first.split(b" ", 3)
                if len(parts) > 2 and parts[2].upper().startswith(b"FETCH"):
                    fetches += 1
                elif parts[1].upper().startswith(b"SEARCH"):
                    hits.extend(int(x) for x in first[8:].split() if x.isdigit())


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


OPS = [
    ("fetch_envelope", "FETCH 1:* (FLAGS ENVELOPE)", b"FETCH 1:* (FLAGS ENVELOPE)"),
    ("fetch_header", "FETCH 1:* BODY.PEEK[HEADER]", b"FETCH 1:* BODY.PEEK[HEADER]"),
    ("search_subject", f"SEARCH SUBJECT {WORD}", b"SEARCH SUBJECT " + WORD.encode()),
    ("search_text_absent", "SEARCH TEXT <absent word>", None),
    ("search_text_word", f"SEARCH TEXT {WORD}", b"SEARCH TEXT " + WORD.encode()),
]


def expected_counts(info, n):
    exp = {"exists": n, "fetch_envelope": n, "fetch_header": n, "search_text_absent": 0}
    subj = text = 0
    for m in info["templates"]:
        if m["user"]:
            continue
        k = share(n, info["t_unknown"], m["index"])
        subj += k if m["subject_word"] else 0
        text += k if m["text_word"] else 0
    exp["search_subject"], exp["search_text_word"] = subj, text
    return exp


def byte_check(srv, info, tdir, seqs):
    """BODY.PEEK[] of some messages against the template they came from."""
    bad = []
    for s in seqs:
        sink = []
        srv.command(b"FETCH %d BODY.PEEK[]" % s, sink)
        if not sink:
            bad.append(f"{srv.name} #{s}: no body")
            continue
        body = sink[0]
        m = re.search(rb"Message-ID: <(\d{8})\.(\d{3})\.", body)
        if not m:
            bad.append(f"{srv.name} #{s}: no bench Message-ID")
            continue
        n, i = m.group(1), int(m.group(2))
        want = n.join((Path(tdir) / f"o{i:03d}.eml").read_bytes().split(b"{n}"))
        if body != want:
            bad.append(f"{srv.name} #{s}: {len(body)} bytes, expected {len(want)} (template {i}, counter {n.decode()})")
    return bad


def cmd_measure(a):
    info = json.loads((Path(a.templates) / "templates.json").read_text())
    absent = info["absent"]
    ops = [(k, lbl if k != "search_text_absent" else f"SEARCH TEXT {absent} (absent)",
            cmd or b"SEARCH TEXT " + absent.encode()) for k, lbl, cmd in OPS]
    exp = expected_counts(info, a.n)
    jg = Server("journalgate", a.jg, a.jg_user, os.environ["JG_PASS"], a.jg_folder, pid=a.jg_pid)
    dc = Server("dovecot", a.dc, a.dc_user, os.environ["DC_PASS"], a.dc_folder, master=a.dc_master)
    servers = [jg, dc]
    res = {"n": a.n, "repeat": a.repeat, "absent": absent, "word": WORD, "expected": exp,
           "folders": {"journalgate": a.jg_folder, "dovecot": a.dc_folder},
           "ops": [[k, l] for k, l, _ in ops], "servers": {}, "warnings": []}
    warn = res["warnings"]
    sampler = Sampler()
    sampler.start()
    for s in servers:
        res["servers"][s.name] = {"ops": {}, "warmup": {}}

    def log(msg):
        print(f"[archive-read {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # warm-up: SELECT + FETCH 1:* (FLAGS) on each (Dovecot indexes the Maildir here)
    for s in servers:
        sampler.pids[s.name] = s.rss_pids()
        sampler.label = "warmup"
        t0 = time.perf_counter()
        s.conn, exists, t = s.connect(a.timeout)
        w = res["servers"][s.name]["warmup"]
        w.update({k: round(v, 4) for k, v in t.items()})
        w["exists"] = exists
        f0 = time.perf_counter()
        fetches, _, _ = s.command(b"FETCH 1:* (FLAGS)")
        w["fetch_flags"] = round(time.perf_counter() - f0, 4)
        w["fetch_flags_count"] = fetches
        w["total"] = round(time.perf_counter() - t0, 4)
        s.conn.logout()
        s.conn = None
        log(f"{s.name}: warm-up: EXISTS {exists}, first SELECT {t['select']:.3f} s, "
            f"FETCH 1:* (FLAGS) {w['fetch_flags']:.3f} s")
        if exists != a.n:
            warn.append(f"{s.name}: SELECT shows {exists} messages, expected {a.n}")
    sampler.label = None
    if a.jg_pid:
        try:
            Path(f"/proc/{a.jg_pid}/clear_refs").write_text("5")
            res["servers"]["journalgate"]["hwm_reset"] = True
        except OSError as e:
            warn.append(f"cannot reset journalgate's VmHWM: {e}")

    # LOGIN + SELECT on fresh connections, interleaved; the last one stays open
    sel = {s.name: [] for s in servers}
    for r in range(a.repeat):
        for s in servers:
            if s.conn is not None:
                s.conn.logout()
            sampler.pids[s.name] = s.rss_pids()
            sampler.label = "login_select"
            c0 = s.cpu()
            s.conn, exists, t = s.connect(a.timeout)
            t["server_cpu"] = max(0.0, s.cpu() - c0)
            t["exists"] = exists
            sel[s.name].append(t)
            s.tag = 0
    for s in servers:
        o = res["servers"][s.name]["ops"]
        runs = sel[s.name]
        for k in ("login_select", "login", "select", "connect_starttls"):
            o[k] = {"runs": [round(t[k], 4) for t in runs],
                    "median": round(statistics.median(t[k] for t in runs), 4),
                    "count": runs[-1]["exists"]}
        o["login_select"]["server_cpu"] = round(statistics.median(t["server_cpu"] for t in runs), 3)
        log(f"{s.name}: LOGIN + SELECT median {o['login_select']['median']:.3f} s "
            f"(LOGIN {o['login']['median']:.3f}, SELECT {o['select']['median']:.3f})")
        sampler.pids[s.name] = s.rss_pids()

    for key, label, cmd in ops:
        runs = {s.name: [] for s in servers}
        for r in range(a.repeat):
            for s in servers:
                sampler.label = key
                c0, p0 = s.cpu(), time.process_time()
                t0 = time.perf_counter()
                fetches, hits, nbytes = s.command(cmd)
                wall = time.perf_counter() - t0
                runs[s.name].append({"wall": wall, "server_cpu": s.cpu() - c0,
                                     "client_cpu": time.process_time() - p0,
                                     "count": len(hits) if cmd.startswith(b"SEARCH") else fetches,
                                     "bytes": nbytes})
        sampler.label = None
        for s in servers:
            rr = runs[s.name]
            counts = sorted({x["count"] for x in rr})
            res["servers"][s.name]["ops"][key] = {
                "runs": [round(x["wall"], 4) for x in rr],
                "median": round(statistics.median(x["wall"] for x in rr), 4),
                "count": rr[-1]["count"], "counts": counts,
                "server_cpu": round(statistics.median(x["server_cpu"] for x in rr), 3),
                "client_cpu": round(statistics.median(x["client_cpu"] for x in rr), 3),
                "bytes": rr[-1]["bytes"]}
            if len(counts) > 1:
                warn.append(f"{s.name}: {label}: the result count changed between runs: {counts}")
        jgo, dco = (res["servers"][n]["ops"][key] for n in ("journalgate", "dovecot"))
        log(f"{label}: journalgate {jgo['median']:.3f} s ({jgo['count']}), "
            f"Dovecot {dco['median']:.3f} s ({dco['count']})")
        if jgo["count"] != dco["count"]:
            warn.append(f"{label}: journalgate found {jgo['count']}, Dovecot {dco['count']}")
        if key in exp:
            for s in servers:
                got = res["servers"][s.name]["ops"][key]["count"]
                if got != exp[key]:
                    warn.append(f"{s.name}: {label}: {got} results, the templates say {exp[key]}")

    # the same bytes on both sides: some messages fetched whole and compared
    n = a.n
    seqs = sorted({1, 2, max(1, n // 2), max(1, n - 1), n} | {random.randint(1, n) for _ in range(5)})
    for s in servers:
        bad = byte_check(s, info, a.templates, seqs)
        res["servers"][s.name]["byte_check"] = {"messages": len(seqs), "mismatches": bad}
        warn.extend(bad)

    sampler.label = None
    for s in servers:
        srv = res["servers"][s.name]
        for key in srv["ops"]:
            pk = sampler.peak.get((s.name, key))
            if pk:
                srv["ops"][key]["peak_rss_kb"] = pk
        pids = s.rss_pids()
        srv["vmhwm_kb"] = sum(proc_kb(p, "VmHWM:") for p in pids)
        srv["vmrss_kb"] = sum(proc_kb(p, "VmRSS:") for p in pids)
        srv["processes"] = len(pids)

    # optional profile of journalgate (not timed): `perf record` around one run of each op
    if a.perf_dir and a.jg_pid:
        Path(a.perf_dir).mkdir(parents=True, exist_ok=True)
        prof = {}
        for key, label, cmd in ops:
            out = Path(a.perf_dir) / f"{key}.data"
            p = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(a.jg_pid),
                                  "-o", str(out)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            t0 = time.perf_counter()
            jg.command(cmd)
            prof[key] = round(time.perf_counter() - t0, 3)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        res["servers"]["journalgate"]["profiled_runs"] = prof

    for s in servers:
        try:
            s.conn.logout()
        except Exception:   # noqa: BLE001
            pass
    sampler.stop.set()
    Path(a.out).write_text(json.dumps(res, indent=1))
    for w in warn:
        log(f"WARNING: {w}")


# --------------------------------------------------------------------------- report

def secs(x):
    if x is None:
        return "–"
    if x < 0.01:
        return f"{x * 1000:.1f} ms"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    if x < 100:
        return f"{x:.2f} s"
    return f"{x:.0f} s"


def ratio(j, d):
    if j is None or d is None or j <= 0 or d <= 0:
        return "–"
    r = j / d
    if r >= 1:
        return f"{r:.1f}× slower" if r < 10 else f"{r:.0f}× slower"
    return f"{1 / r:.1f}× faster" if 1 / r < 10 else f"{1 / r:.0f}× faster"


def cmd_table(a):
    for path in a.inp:
        r = json.loads(Path(path).read_text())
        jg, dc = r["servers"]["journalgate"], r["servers"]["dovecot"]
        exp = r["expected"]
        n = r["n"]
        print(f"### {n:,} messages in the folder read "
              f"(journalgate `{r['folders']['journalgate']}`, Dovecot `{r['folders']['dovecot']}`), "
              f"median of {r['repeat']}\n")
        print("| operation | journalgate | Dovecot | ratio | results (journalgate / Dovecot / expected) |")
        print("|---|---:|---:|---|---|")
        rows = [("login_select", "LOGIN + SELECT", "exists"), ("select", "… of which SELECT", "exists")]
        rows += [(k, l, k) for k, l in r["ops"]]
        met = []
        for key, label, ek in rows:
            j, d = jg["ops"].get(key, {}), dc["ops"].get(key, {})
            jm, dm = j.get("median"), d.get("median")
            num = lambda v: f"{v:,}" if isinstance(v, int) else "–"  # noqa: E731
            cnt = f"{num(j.get('count'))} / {num(d.get('count'))} / {num(exp.get(ek))}"
            if key != "select" and jm is not None and dm is not None:
                met.append((label, jm < dm))
            print(f"| `{label}` | **{secs(jm)}** | **{secs(dm)}** | {ratio(jm, dm)} | {cnt} |")
        print()
        print("Server CPU (median per run; journalgate: the process, all threads; Dovecot: the "
              "master and its children, imap-login doing TLS and imap), client CPU (the Python "
              "reader), bytes read, peak RSS sampled every 0.1 s during the runs:\n")
        print("| operation | journalgate CPU s | Dovecot CPU s | client CPU s (jg / dc) | bytes (jg / dc) | peak RSS MB (jg / dc) |")
        print("|---|---:|---:|---|---|---|")
        for key, label, _ in rows:
            if key == "select":
                continue
            j, d = jg["ops"].get(key, {}), dc["ops"].get(key, {})
            mb = lambda o: f"{o['peak_rss_kb'] / 1024:.0f}" if o.get("peak_rss_kb") else "–"  # noqa: E731
            cc = lambda o: f"{o['client_cpu']:.2f}" if "client_cpu" in o else "–"  # noqa: E731
            by = lambda o: f"{o['bytes'] / 1e6:.1f} MB" if "bytes" in o else "–"  # noqa: E731
            print(f"| `{label}` | {j.get('server_cpu', 0):.2f} | {d.get('server_cpu', 0):.2f} | "
                  f"{cc(j)} / {cc(d)} | {by(j)} / {by(d)} | {mb(j)} / {mb(d)} |")
        print()
        wj, wd = jg["warmup"], dc["warmup"]
        print(f"Warm-up (not in the table): journalgate first SELECT {secs(wj.get('select'))}, "
              f"FETCH 1:* (FLAGS) {secs(wj.get('fetch_flags'))}; Dovecot first SELECT (indexes "
              f"the Maildir) {secs(wd.get('select'))}, FETCH 1:* (FLAGS) {secs(wd.get('fetch_flags'))}.")
        print(f"journalgate RSS: VmHWM {jg.get('vmhwm_kb', 0) / 1024:.0f} MB over the reads "
              f"(reset after the warm-up; it includes LOGIN, whose password key derivation is "
              f"the LOGIN + SELECT row's peak), {jg.get('vmrss_kb', 0) / 1024:.0f} MB at the end. "
              f"Dovecot ({dc.get('processes', 0)} processes): sum of VmHWM {dc.get('vmhwm_kb', 0) / 1024:.0f} MB.")
        for s in ("journalgate", "dovecot"):
            bc = r["servers"][s].get("byte_check")
            if bc:
                print(f"{s}: {bc['messages']} messages fetched whole (BODY.PEEK[]) and compared "
                      f"with the original rendered from its template: "
                      f"{'all identical' if not bc['mismatches'] else '; '.join(bc['mismatches'])}.")
        print()
        faster = all(ok for _, ok in met)
        print(f"- Target \"faster than Dovecot on every row\" at {n:,}: "
              f"**{'met' if faster else 'MISSED'}**"
              + ("" if faster else f" (slower: {', '.join(f'`{l}`' for l, ok in met if not ok)})"))
        if r["warnings"]:
            print("- **Warnings:** " + "; ".join(r["warnings"]))
        print()


def cmd_estimate(a):
    """Seconds the reads of `measure` would take at --scale times the size, with --repeat."""
    r = json.loads(Path(a.inp).read_text())
    warm = per_repeat = 0.0
    for srv in r["servers"].values():
        w = srv["warmup"]
        warm += w.get("total", 0)
        per_repeat += sum(o["median"] for k, o in srv["ops"].items()
                          if k not in ("login", "select", "connect_starttls"))
    print(f"{(warm + a.repeat * per_repeat) * a.scale:.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--dir", required=True)
    g.add_argument("--seed", type=int, default=20261207)
    pl = sub.add_parser("plan")
    pl.add_argument("--dir", required=True)
    pl.add_argument("--from", dest="frm", type=int, default=0)
    pl.add_argument("--to", type=int, required=True)
    pl.add_argument("--users", action="store_true")
    md = sub.add_parser("maildir")
    md.add_argument("--dir", required=True)
    md.add_argument("--maildir", required=True)
    md.add_argument("--from", dest="frm", type=int, default=0)
    md.add_argument("--to", type=int, required=True)
    md.add_argument("--owner")
    m = sub.add_parser("measure", help="passwords in the environment: JG_PASS, DC_PASS")
    m.add_argument("--templates", required=True)
    m.add_argument("--n", type=int, required=True, help="messages expected in each folder")
    m.add_argument("--jg", required=True, help="HOST:PORT (STARTTLS)")
    m.add_argument("--jg-user", required=True)
    m.add_argument("--jg-folder", default="Unknown Addresses")
    m.add_argument("--jg-pid", type=int)
    m.add_argument("--dc", required=True, help="HOST:PORT (STARTTLS)")
    m.add_argument("--dc-user", required=True)
    m.add_argument("--dc-folder", default="INBOX")
    m.add_argument("--dc-master", type=int)
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--timeout", type=float, default=3600)
    m.add_argument("--perf-dir")
    m.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("--in", dest="inp", action="append", required=True)
    e = sub.add_parser("estimate")
    e.add_argument("--in", dest="inp", required=True)
    e.add_argument("--scale", type=float, required=True)
    e.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    {"estimate": cmd_estimate, "gen": cmd_gen, "plan": cmd_plan, "maildir": cmd_maildir, "measure": cmd_measure,
     "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
