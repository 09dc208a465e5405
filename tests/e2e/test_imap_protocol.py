"""IMAP server (issue 3): greeting, TLS, login, mailbox commands, FETCH/SEARCH/STORE,
expunge paths, concurrency, live delivery, UIDVALIDITY, limits. Line-level client over
real sockets against a live gateway."""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import re
import socket
import ssl
import threading
import time

import pytest

from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    RawIMAP, as_int, build_message, caps_of, fetch_bodies, fill, igw, make_igw,
    message_count, parse_fetch, quote, raw_login, uid_map,
)
from jgharness import (
    HOSTNAME, auth_plain_b64, pop3_fetch_all, send_smtp, smtp_connect, strip_received,
    unverified_ctx,
)

BEFORE_TLS = {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}
AFTER_TLS = {"IMAP4REV1", "AUTH=PLAIN", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE",
             "NAMESPACE", "UIDPLUS", "UNSELECT", "SPECIAL-USE", "CHILDREN", "CONDSTORE",
             "QRESYNC", "ESEARCH", "SORT", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES",
             "THREAD=ORDEREDSUBJECT", "LIST-STATUS"}
NOT_ADVERTISED = {"MOVE", "UIDONLY"}
GREETING_RE = re.compile(rb"^\* OK \[CAPABILITY [^\]]*\] journalgate IMAP ready")


def closing(c):
    return contextlib.closing(c)


def flags(d) -> list[str]:
    """The FLAGS of a parsed FETCH item dict, sorted, without the session flag \\Recent."""
    return sorted(str(f) for f in d["FLAGS"] if str(f).upper() != "\\RECENT")


def refused(r, code=None):
    """A clean refusal: tagged NO or BAD (optionally with a response code)."""
    assert r.status in ("NO", "BAD"), r
    if code:
        assert r.code and r.code.upper().startswith(code), r


# ------------------------------------------------------------------ greeting, TLS, capabilities


def test_greeting_and_capabilities_before_and_after_starttls(igw):
    mbx, _ = fill(igw, 1)
    with closing(RawIMAP(igw.imap_port)) as c:
        assert GREETING_RE.match(c.greeting), c.greeting
        caps = caps_of(c.greeting)
        assert BEFORE_TLS <= caps, caps
        assert not any(x.startswith("AUTH=") for x in caps), caps
        r = c.cmd("CAPABILITY")
        assert r.ok, r
        caps2 = caps_of(r.lines("CAPABILITY")[0])
        assert BEFORE_TLS <= caps2 and not any(x.startswith("AUTH=") for x in caps2), caps2
        # credentials are refused in plaintext
        r = c.cmd(f'LOGIN {mbx["id"]} {quote(mbx["password"])}')
        refused(r, "PRIVACYREQUIRED")
        r = c.cmd(f"AUTHENTICATE PLAIN {auth_plain_b64(mbx['id'], mbx['password'])}")
        refused(r, "PRIVACYREQUIRED")
        # the session is still usable: upgrade and log in
        c.starttls()
        r = c.cmd("CAPABILITY")
        assert r.ok, r
        caps3 = caps_of(r.lines("CAPABILITY")[0])
        assert AFTER_TLS <= caps3, caps3
        assert not caps3 & NOT_ADVERTISED, caps3
        assert "STARTTLS" not in caps3 and "LOGINDISABLED" not in caps3, caps3
        r = c.login(mbx["id"], mbx["password"])
        after = caps_of(r.text)
        assert "IMAP4REV1" in after and "IDLE" in after and "UIDPLUS" in after, r
        assert not after & NOT_ADVERTISED, after
        r = c.cmd("STARTTLS")
        refused(r)
        r = c.cmd("LOGOUT")
        assert r.ok and r.lines("BYE"), r


def test_implicit_tls_greeting(igw):
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        assert GREETING_RE.match(c.greeting), c.greeting
        caps = caps_of(c.greeting)
        assert AFTER_TLS <= caps, caps
        assert not caps & NOT_ADVERTISED, caps
        assert "LOGINDISABLED" not in caps and "STARTTLS" not in caps, caps
        # ID before authentication, in all spellings clients use
        for arg in ('("name" "Thunderbird" "version" "153.7.0")', "NIL"):
            r = c.cmd(f"ID {arg}")
            assert r.ok and r.lines("ID"), (arg, r)


def test_same_certificate_on_imap_listeners(igw):
    with closing(RawIMAP(igw.imap_port)) as c:
        c.starttls()
        a = c.sock.getpeercert(binary_form=True)
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        b = c.sock.getpeercert(binary_form=True)
    with socket.create_connection(("127.0.0.1", igw.pop3s_port), timeout=30) as s:
        with unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            p = t.getpeercert(binary_form=True)
    assert a == b == p


def test_starttls_command_injection(igw):
    """A command pipelined in plaintext behind STARTTLS must not run inside TLS."""
    mbx, _ = fill(igw, 1)
    s = socket.create_connection(("127.0.0.1", igw.imap_port), timeout=30)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a1 STARTTLS\r\na2 CAPABILITY\r\n")
        resp = f.readline()
        assert resp.startswith(b"a1 OK"), resp
        try:
            t = unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME)
        except (OSError, ssl.SSLError):
            return  # the server dropped the connection: safe
        t.settimeout(30)
        t.sendall(b"a3 NOOP\r\n")
        tf = t.makefile("rb")
        lines = []
        while True:
            ln = tf.readline()
            assert ln, f"connection closed; got {lines!r}"
            lines.append(ln)
            if ln.startswith(b"a3 "):
                break
        assert not any(ln.startswith(b"a2 ") or ln.startswith(b"* CAPABILITY") for ln in lines), \
            f"the injected plaintext command ran inside TLS: {lines!r}"
    finally:
        s.close()


# ------------------------------------------------------------------ login


@pytest.mark.parametrize("how", ["login", "login-at-host", "login-literal", "login-literal-plus",
                                 "plain-ir", "plain-continuation", "plain-authzid",
                                 "starttls-login"])
def test_login_variants(igw, how):
    mbx, msgs = fill(igw, 1)
    user, pw = mbx["id"], mbx["password"]
    c = RawIMAP(igw.imap_port) if how == "starttls-login" else RawIMAP(igw.imaps_port,
                                                                     implicit_tls=True)
    with closing(c):
        if how == "starttls-login":
            c.starttls()
        if how in ("login", "starttls-login"):
            r = c.cmd(f"LOGIN {user} {quote(pw)}")
        elif how == "login-at-host":
            r = c.cmd(f'LOGIN "{user}@{HOSTNAME}" {quote(pw)}')
        elif how == "login-literal":
            r = c.cmd_lit(f"LOGIN {user} ", pw.encode())
        elif how == "login-literal-plus":
            tag = c.next_tag()
            c.send(f"{tag} LOGIN {user} {{{len(pw)}+}}\r\n{pw}\r\n")
            r = c.wait(tag)
        elif how == "plain-ir":
            r = c.cmd(f"AUTHENTICATE PLAIN {auth_plain_b64(user, pw)}")
        elif how == "plain-authzid":
            ir = base64.b64encode(f"{user}\0{user}\0{pw}".encode()).decode()
            r = c.cmd(f"AUTHENTICATE PLAIN {ir}")
        else:  # continuation, as offlineimap and Thunderbird do it
            tag = c.next_tag()
            c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
            cont = c.read_response()
            assert cont.startswith(b"+"), cont
            c.send(auth_plain_b64(user, pw) + "\r\n")
            r = c.wait(tag)
        assert r.ok, r
        caps = caps_of(r.text)  # capabilities in the tagged OK
        assert "IMAP4REV1" in caps, r
        r = c.select()
        assert r.exists() == [1], r
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert r.ok and strip_received(r.fetches()[0][1]["BODY[]"]) == msgs[0][1], r
        c.cmd("LOGOUT")
    log = igw.log_text()
    assert pw not in log, "the password appears in the server log"
    assert auth_plain_b64(user, pw) not in log, "the SASL PLAIN response appears in the log"


def _failed_login(igw, user, password):
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        t0 = time.monotonic()
        r = c.cmd(f"LOGIN {quote(user)} {quote(password)}")
        dt = time.monotonic() - t0
        # the session survives a failed login
        assert c.cmd("NOOP").ok
        return dt, r


def test_wrong_password_delay_grows(igw):
    mbx, _ = fill(igw, 1)
    # an unknown mailbox ID costs what a wrong password costs (a decoy key is unwrapped, so
    # timing does not tell which mailboxes exist): each time is the penalty plus one unwrap
    unknown = "mbx-" + "0" * 32
    times = []
    for i in range(3):
        dt, r = _failed_login(igw, unknown, f"wrong-{i}")
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", r
        times.append(dt)
    dt, r = _failed_login(igw, mbx["id"], "wrong-password")  # a real mailbox: same penalty
    assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", r
    times.append(dt)
    # failure_delay_ms = 200, doubling per failure from this address: 0.2, 0.4, 0.8, 1.6 s
    for got, want in zip(times, (0.2, 0.4, 0.8, 1.6)):
        assert got >= want * 0.9, times
    # the unwrap cost cancels in the differences: 0.6 s and 1.2 s of added penalty
    assert times[2] - times[0] > 0.45, times
    assert times[3] - times[1] > 0.9, times
    # the right password still works afterwards
    with closing(raw_login(igw, mbx)) as c:
        assert c.select().exists() == [1]


def test_wrong_credentials_are_refused(igw):
    a, _ = fill(igw, 1)
    b, _ = fill(igw, 1)
    for user, pw in ((b["id"], a["password"]), (f"{b['id']}@{HOSTNAME}", a["password"]),
                     ("mbx-" + "0" * 32, a["password"]), (f"{a['id']}@other.example", a["password"])):
        _, r = _failed_login(igw, user, pw)
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", (user, r)
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        r = c.cmd(f"AUTHENTICATE PLAIN {auth_plain_b64(a['id'], b['password'])}")
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", r
        # authorization identity of another mailbox with a's own credentials: refused
        ir = base64.b64encode(f"{b['id']}\0{a['id']}\0{a['password']}".encode()).decode()
        r = c.cmd(f"AUTHENTICATE PLAIN {ir}")
        assert r.status == "NO", r
        # AUTHENTICATE cancelled by the client: tagged BAD (RFC 3501 6.2.2)
        tag = c.next_tag()
        c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
        assert c.read_response().startswith(b"+")
        c.send("*\r\n")
        r = c.wait(tag)
        assert r.status == "BAD", r
        # unknown mechanism
        r = c.cmd("AUTHENTICATE CRAM-MD5")
        refused(r)
        assert c.cmd("NOOP").ok


def test_commands_before_login_refused(igw):
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        for line in ("SELECT INBOX", "EXAMINE INBOX", "LIST \"\" \"*\"", "STATUS INBOX (MESSAGES)",
                     "FETCH 1 (FLAGS)", "UID FETCH 1:* (FLAGS)", "STORE 1 +FLAGS (\\Seen)",
                     "SEARCH ALL", "EXPUNGE", "CLOSE", "IDLE", "NAMESPACE"):
            r = c.cmd(line)
            refused(r)
        assert c.cmd("CAPABILITY").ok
        assert c.cmd("NOOP").ok


# ------------------------------------------------------------------ mailbox commands


def test_list_lsub_namespace_enable_id(igw):
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx)) as c:
        r = c.cmd('LIST "" "*"')
        assert r.ok, r
        lists = r.lines("LIST")
        assert len(lists) == 1, r
        assert re.match(rb'^\* LIST \(\\HasNoChildren\) "/" "?INBOX"?$', lists[0], re.I), lists
        r = c.cmd('LIST "" ""')
        assert r.ok, r
        assert len(r.lines("LIST")) == 1 and b'"/"' in r.lines("LIST")[0], r
        assert re.search(rb'\\Noselect', r.lines("LIST")[0], re.I), r
        for pat in ('"INBOX"', '"inbox"', "%", "INBOX"):
            r = c.cmd(f'LIST "" {pat}')
            assert r.ok and len(r.lines("LIST")) == 1, (pat, r)
        r = c.cmd('LIST "" "Trash"')
        assert r.ok and not r.lines("LIST"), r
        r = c.cmd('LIST "" "*" RETURN (SPECIAL-USE)')
        assert r.ok and len(r.lines("LIST")) == 1, r
        r = c.cmd('LIST (SPECIAL-USE) "" "*"')
        assert r.ok, r
        r = c.cmd('LIST (SUBSCRIBED) "" "*"')  # Thunderbird
        assert r.ok, r
        r = c.cmd('LSUB "" "*"')  # neomutt
        assert r.ok, r
        assert all(b"INBOX" in ln.upper() for ln in r.lines("LSUB")), r
        r = c.cmd("NAMESPACE")
        assert r.ok, r
        ns = r.lines("NAMESPACE")
        assert len(ns) == 1 and ns[0].startswith(b"* NAMESPACE ((") and b'"/"' in ns[0], r
        r = c.cmd("ENABLE UTF8=ACCEPT")  # neomutt
        assert r.ok, r
        r = c.cmd("ENABLE CONDSTORE")  # advertised: enabled once
        assert r.ok and r.lines("ENABLED") == [b"* ENABLED CONDSTORE"], r
        r = c.cmd("ENABLE CONDSTORE X-UNKNOWN")
        assert r.ok and r.lines("ENABLED") == [b"* ENABLED"], r
        for arg in ('("name" "iPhone Mail" "version" "21A329" "os" "iOS")', "NIL", "()"):
            r = c.cmd(f"ID {arg}")
            assert r.ok and r.lines("ID"), (arg, r)
        # still healthy; selecting works after all that
        assert c.select().exists() == [1]


def test_status_select_examine(igw):
    mbx, msgs = fill(igw, 3)
    info = igw.show(mbx["id"])
    with closing(raw_login(igw, mbx)) as c:
        r = c.cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
        assert r.ok, r
        st = r.lines("STATUS")[0]
        vals = dict(re.findall(rb"(MESSAGES|UIDNEXT|UIDVALIDITY|UNSEEN|RECENT) (\d+)", st, re.I))
        vals = {k.decode().upper(): int(v) for k, v in vals.items()}
        assert set(vals) == {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT"}, st
        assert vals["MESSAGES"] == 3 and vals["UNSEEN"] == 3, st
        assert vals["UIDVALIDITY"] == info["uidvalidity"], (st, info)

        r = c.cmd("SELECT INBOX")
        assert r.ok and r.code == "READ-WRITE", r
        assert r.exists() == [3], r
        assert r.lines("3 RECENT") or r.lines("0 RECENT"), r
        flag_lines = r.lines("FLAGS")
        assert len(flag_lines) == 1, r
        for f in ("\\SEEN", "\\DELETED", "\\FLAGGED", "\\ANSWERED", "\\DRAFT"):
            assert f.encode() in flag_lines[0].upper(), flag_lines
        pf = r.code_value("PERMANENTFLAGS")
        assert len(pf) == 1, r
        for f in (b"\\SEEN", b"\\DELETED", b"\\FLAGGED", b"\\ANSWERED", b"\\DRAFT"):
            assert f in pf[0].upper(), pf  # all five are stored
        uv = r.code_value("UIDVALIDITY")
        assert [int(x) for x in uv] == [info["uidvalidity"]], r
        uidnext = [int(x) for x in r.code_value("UIDNEXT")]
        uids = uid_map(c)
        assert len(uids) == 3 and uids == sorted(uids) and len(set(uids)) == 3, uids
        assert uidnext == [vals["UIDNEXT"]] and uidnext[0] > uids[-1], (uidnext, uids)

        r = c.cmd("EXAMINE INBOX")
        assert r.ok and r.code == "READ-ONLY", r
        assert r.exists() == [3], r
        r = c.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert r.status == "NO", r
        r = c.cmd("UID STORE 1:* +FLAGS (\\Seen)")
        assert r.status == "NO", r
        r = c.cmd("EXPUNGE")
        assert r.status == "NO", r
        # BODY[] in a read-only mailbox does not set \Seen
        r = c.cmd("FETCH 1 (BODY[])")
        assert r.ok, r
        r = c.cmd("FETCH 1 (FLAGS)")
        assert r.ok and "\\Seen" not in flags(r.fetches()[0][1]), r
        assert c.cmd("CHECK").ok

        # selecting a mailbox that does not exist: NO, and no mailbox is selected any more
        r = c.cmd("SELECT Trash")
        assert r.status == "NO", r
        refused(c.cmd("FETCH 1 (FLAGS)"))
        r = c.cmd("SELECT inbox")  # INBOX is case-insensitive
        assert r.ok and r.exists() == [3], r
        c.cmd("LOGOUT")
    # EXAMINE/STORE refusals changed nothing
    assert message_count(igw, mbx) == 3


def test_unsupported_mailbox_commands_refused_cleanly(igw):
    mbx, _ = fill(igw, 2)
    with closing(raw_login(igw, mbx, select=True)) as c:
        for line in ('CREATE "Trash"', "DELETE INBOX", 'DELETE "Trash"', "RENAME INBOX Archive",
                     'COPY 1 "Trash"', 'UID COPY 1:* "Trash"', 'MOVE 1 "Trash"',
                     'UID MOVE 1 "Trash"'):
            r = c.cmd(line)
            assert r.status == "NO" and r.code, (line, r)
        # APPEND with a synchronizing literal: NO (before or after the continuation)
        msg = build_message(subject="appended")
        r = c.cmd_lit('APPEND INBOX (\\Seen) ', msg)
        assert r.status == "NO" and r.code, r
        # and with LITERAL+ (the literal follows at once and must be skipped)
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
        r = c.wait(tag)
        assert r.status == "NO" and r.code, r
        r = c.cmd("NOOP")
        assert r.ok, r
        assert c.cmd('SUBSCRIBE INBOX').status in ("OK", "NO")
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")
    assert message_count(igw, mbx) == 2


# ------------------------------------------------------------------ FETCH


def mime_message():
    payload = bytes(range(256)) * 3
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    inner = (b"From: Inner Sender <inner@fabrikam.example>\r\n"
             b"To: bob@fabrikam.example\r\n"
             b"Subject: inner subject\r\n"
             b"Message-ID: <inner-1@fabrikam.example>\r\n"
             b"\r\n"
             b"inner body line 1\r\ninner body line 2\r\n")
    part1_hdr = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    part1 = "Hello Gr\u00fc\u00dfe\r\nsecond line".encode()
    part2_hdr = (b'Content-Type: application/octet-stream; name="a.bin"\r\n'
                 b"Content-Transfer-Encoding: base64\r\n"
                 b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n')
    part2 = b64.rstrip(b"\r\n")
    part3_hdr = b"Content-Type: message/rfc822\r\n\r\n"
    part3 = inner.rstrip(b"\r\n")
    header = (b"From: Alice Example <alice@contoso.example>\r\n"
              b"To: Bob <bob@fabrikam.example>, carol@fabrikam.example\r\n"
              b"Subject: mime test\r\n"
              b"Date: Mon, 16 Nov 2026 10:00:00 +0000\r\n"
              b"Message-ID: <mime-1@contoso.example>\r\n"
              b"X-Custom: one\r\n"
              b"MIME-Version: 1.0\r\n"
              b'Content-Type: multipart/mixed; boundary="b1"\r\n'
              b"\r\n")
    body = (b"preamble\r\n"
            b"--b1\r\n" + part1_hdr + part1 + b"\r\n"
            b"--b1\r\n" + part2_hdr + part2 + b"\r\n"
            b"--b1\r\n" + part3_hdr + part3 + b"\r\n"
            b"--b1--\r\n")
    parts = {"1.MIME": part1_hdr, "1": part1, "2.MIME": part2_hdr, "2": part2,
             "3.MIME": part3_hdr, "3": part3, "payload2": payload, "inner": inner}
    return header + body, header, body, parts


def test_fetch_items(igw):
    msg, header, body, parts = mime_message()
    mbx = igw.create_mailbox()
    send_smtp(igw, mbx["address"], msg)
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        assert r.ok, r
        (n, d), = r.fetches()
        stored = d["BODY[]"]
        assert strip_received(stored) == msg
        rcvd = stored[:len(stored) - len(msg)]
        full_header = rcvd + header
        assert as_int(d["RFC822.SIZE"]) == len(stored), d
        assert flags(d) == [], d
        idate = d["INTERNALDATE"].decode()
        parsed = datetime.datetime.strptime(idate, "%d-%b-%Y %H:%M:%S %z")
        now = datetime.datetime.now(datetime.timezone.utc)
        assert abs((now - parsed).total_seconds()) < 600, idate
        uid = as_int(d["UID"])

        def one(items):
            r = c.cmd(f"FETCH 1 ({items})")
            assert r.ok, (items, r)
            f = r.fetches()
            assert len(f) >= 1, (items, r)
            merged = {}
            for _, dd in f:
                merged.update(dd)
            return merged

        d = one("BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.HEADER")
        assert d["BODY[HEADER]"] == full_header
        assert d["BODY[TEXT]"] == body
        assert d["RFC822.HEADER"] == full_header
        d = one("BODY.PEEK[HEADER.FIELDS (RECEIVED)]")  # folded: all continuation lines
        assert d["BODY[HEADER.FIELDS (RECEIVED)]"] == rcvd + b"\r\n", d
        d = one("BODY.PEEK[HEADER.FIELDS (Subject From)]")
        (k, v), = [(k, v) for k, v in d.items() if k.startswith("BODY[HEADER.FIELDS")]
        assert k == "BODY[HEADER.FIELDS (SUBJECT FROM)]", k
        assert v == (b"From: Alice Example <alice@contoso.example>\r\n"
                     b"Subject: mime test\r\n\r\n"), v
        d = one("BODY.PEEK[HEADER.FIELDS.NOT (Received Content-Type MIME-Version X-Custom To)]")
        (v,) = [v for k, v in d.items() if k.startswith("BODY[HEADER.FIELDS.NOT")]
        assert v == (b"From: Alice Example <alice@contoso.example>\r\n"
                     b"Subject: mime test\r\n"
                     b"Date: Mon, 16 Nov 2026 10:00:00 +0000\r\n"
                     b"Message-ID: <mime-1@contoso.example>\r\n\r\n"), v
        # Thunderbird's and neomutt's header fetches (many names, some absent)
        d = one("UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
                "Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
                "Reply-To Received)]")
        (v,) = [v for k, v in d.items() if k.startswith("BODY[HEADER.FIELDS")]
        assert v.startswith(b"Received:") and b"\r\nSubject: mime test\r\n" in v, v
        assert b"X-Custom" not in v and v.endswith(b"\r\n\r\n"), v
        # partial fetches
        d = one("BODY.PEEK[]<0.20> BODY.PEEK[TEXT]<10.5>")
        assert d["BODY[]<0>"] == stored[:20], d
        assert d["BODY[TEXT]<10>"] == body[10:15], d
        d = one("BODY.PEEK[]<5.100000000>")
        assert d["BODY[]<5>"] == stored[5:]
        d = one("BODY.PEEK[]<100000000.10>")
        assert d["BODY[]<100000000>"] in (b"", None), d
        # MIME parts
        d = one("BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[3] "
                "BODY.PEEK[3.MIME]")
        for sec in ("1", "1.MIME", "2", "2.MIME", "3", "3.MIME"):
            assert d[f"BODY[{sec}]"] == parts[sec], (sec, d[f"BODY[{sec}]"][:200])
        d = one("BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] BODY.PEEK[3.HEADER.FIELDS (SUBJECT)]")
        inner = parts["inner"]
        ih, it = inner.split(b"\r\n\r\n", 1)
        assert d["BODY[3.HEADER]"] == ih + b"\r\n\r\n"
        assert d["BODY[3.TEXT]"] == it.rstrip(b"\r\n")
        assert d["BODY[3.HEADER.FIELDS (SUBJECT)]"] == b"Subject: inner subject\r\n\r\n"
        d = one("BINARY.PEEK[2] BINARY.PEEK[1]")
        assert d["BINARY[2]"] == parts["payload2"]
        assert d["BINARY[1]"] == parts["1"]
        # ENVELOPE
        d = one("ENVELOPE")
        env = d["ENVELOPE"]
        assert len(env) == 10, env
        assert env[0] == b"Mon, 16 Nov 2026 10:00:00 +0000"
        assert env[1] == b"mime test"
        alice = [[b"Alice Example", None, b"alice", b"contoso.example"]]
        assert env[2] == alice and env[3] == alice and env[4] == alice, env
        assert env[5] == [[b"Bob", None, b"bob", b"fabrikam.example"],
                          [None, None, b"carol", b"fabrikam.example"]], env[5]
        assert env[6] is None and env[7] is None and env[8] is None, env
        assert env[9] == b"<mime-1@contoso.example>"
        # BODYSTRUCTURE
        d = one("BODYSTRUCTURE")
        bs = d["BODYSTRUCTURE"]
        assert isinstance(bs[0], list) and isinstance(bs[1], list) and isinstance(bs[2], list), bs
        assert bs[3].upper() == b"MIXED", bs
        p1, p2, p3 = bs[0], bs[1], bs[2]
        assert (p1[0].upper(), p1[1].upper()) == (b"TEXT", b"PLAIN"), p1
        assert [x.upper() for x in p1[2]] == [b"CHARSET", b"UTF-8"], p1
        assert p1[5].upper() == b"8BIT" and as_int(p1[6]) == len(parts["1"]), p1
        assert as_int(p1[7]) in (1, 2), p1  # text parts carry a line count
        assert (p2[0].upper(), p2[1].upper(), p2[5].upper()) == (
            b"APPLICATION", b"OCTET-STREAM", b"BASE64"), p2
        assert as_int(p2[6]) == len(parts["2"]), p2
        assert (p3[0].upper(), p3[1].upper()) == (b"MESSAGE", b"RFC822"), p3
        assert as_int(p3[6]) == len(parts["3"]), p3
        assert p3[7][1] == b"inner subject", p3[7]  # envelope of the encapsulated message
        assert p3[8][0].upper() == b"TEXT" and p3[8][1].upper() == b"PLAIN", p3[8]
        assert [x.upper() for x in bs[4][:2]] == [b"BOUNDARY", b"B1"], bs[4]
        d = one("BODY")
        b = d["BODY"]
        assert isinstance(b[0], list) and b[3].upper() == b"MIXED", b
        assert len(b) == 4, b  # BODY has no extension data
        # nothing set \Seen so far
        assert flags(one("FLAGS")) == []
        # fetch macros
        for macro, want in (("FAST", {"FLAGS", "INTERNALDATE", "RFC822.SIZE"}),
                            ("ALL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"}),
                            ("FULL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"})):
            r = c.cmd(f"FETCH 1 {macro}")  # macros stand alone, without parentheses
            assert r.ok and want <= set(r.fetches()[0][1]), (macro, r)
        # UID form, unparenthesised item (neomutt), UID always returned
        r = c.cmd(f"UID FETCH {uid} BODY.PEEK[]")
        assert r.ok, r
        (_, d), = r.fetches()
        assert as_int(d["UID"]) == uid and d["BODY[]"] == stored
        # RFC822 and BODY[] set \Seen
        r = c.cmd("FETCH 1 RFC822")
        assert r.ok, r
        f = {}
        for _, dd in r.fetches():
            f.update(dd)
        assert f["RFC822"] == stored
        assert "\\Seen" in flags(one("FLAGS"))
        c.cmd("LOGOUT")


def test_body_fetch_sets_seen_and_rfc822_text(igw):
    mbx, msgs = fill(igw, 2)
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("FETCH 2 (BODY[TEXT])")
        assert r.ok, r
        merged = {}
        for _, d in r.fetches():
            merged.update(d)
        assert merged["BODY[TEXT]"] == msgs[1][1].split(b"\r\n\r\n", 1)[1]
        r = c.cmd("FETCH 1:2 (FLAGS)")
        assert {n: flags(d) for n, d in r.fetches()} == {1: [], 2: ["\\Seen"]}, r
        r = c.cmd("FETCH 1 (RFC822.TEXT)")
        assert r.ok, r
        merged = {}
        for _, d in r.fetches():
            merged.update(d)
        assert merged["RFC822.TEXT"] == msgs[0][1].split(b"\r\n\r\n", 1)[1]
        c.cmd("LOGOUT")
    # \Seen is kept for the next session
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("FETCH 1:* (FLAGS)")
        assert {n: flags(d) for n, d in r.fetches()} == {1: ["\\Seen"], 2: ["\\Seen"]}, r


def test_fetch_ranges(igw):
    mbx, msgs = fill(igw, 3)
    with closing(raw_login(igw, mbx, select=True)) as c:
        uids = uid_map(c)
        r = c.cmd("FETCH 2:* (UID)")
        assert sorted(n for n, _ in r.fetches()) == [2, 3], r
        r = c.cmd("FETCH *:2 (UID)")  # reversed range is the same set
        assert sorted(n for n, _ in r.fetches()) == [2, 3], r
        r = c.cmd("FETCH 1,3 (UID)")
        assert sorted(n for n, _ in r.fetches()) == [1, 3], r
        # n:* with n above the highest UID still matches the last message (RFC 3501 6.4.8)
        r = c.cmd(f"UID FETCH {uids[-1] + 100}:* (UID)")
        assert r.ok and [as_int(d["UID"]) for _, d in r.fetches()] == [uids[-1]], r
        # UIDs that do not exist: OK, no data
        r = c.cmd(f"UID FETCH {uids[-1] + 1}:{uids[-1] + 50} (UID)")
        assert r.ok and r.fetches() == [], r
        r = c.cmd(f"UID FETCH {uids[0]},{uids[-1] + 7} (UID)")
        assert r.ok and [as_int(d["UID"]) for _, d in r.fetches()] == [uids[0]], r
        # a sequence number beyond EXISTS is an error
        refused(c.cmd("FETCH 4 (UID)"))
        refused(c.cmd("FETCH 0 (UID)"))
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")


def test_empty_mailbox(igw):
    mbx = igw.create_mailbox()
    with closing(raw_login(igw, mbx)) as c:
        r = c.select()
        assert r.exists() == [0], r
        r = c.cmd("UID FETCH 1:* (FLAGS)")  # mbsync, Thunderbird on an empty mailbox
        assert r.ok and r.fetches() == [], r
        r = c.cmd("UID SEARCH ALL")
        assert r.ok and r.search() == [], r
        r = c.cmd("SEARCH UNSEEN")
        assert r.ok and r.search() == [], r
        r = c.cmd("EXPUNGE")
        assert r.ok, r
        assert c.cmd("CLOSE").ok
        c.cmd("LOGOUT")


# ------------------------------------------------------------------ SEARCH


def test_search_keys(igw):
    mbx = igw.create_mailbox()
    m1 = build_message(subject="Quarterly report alpha", body="the quick brown fox\r\n",
                       sender="Alice <alice@contoso.example>", extra_headers=["X-Journal-Tag: red"])
    m2 = build_message(subject="Quartalsbericht f\u00fcr Q3",
                       body="lazy dog jumps\r\n" + "padding line\r\n" * 400,
                       sender="bob@fabrikam.example", date="Fri, 01 Mar 2019 08:00:00 +0100",
                       extra_headers=["X-Journal-Tag: blue"])
    m3 = build_message(subject="misc", body="nothing to see; Gr\u00fc\u00dfe\r\n",
                       sender="carol@contoso.example")
    for m in (m1, m2, m3):
        send_smtp(igw, mbx["address"], m)
    assert len(m2) > 4000 > len(m1) + 1000 and len(m3) + 1000 < 4000
    today = datetime.date.today()
    d = lambda x: x.strftime("%d-%b-%Y")  # noqa: E731
    with closing(raw_login(igw, mbx, select=True)) as c:
        uids = uid_map(c)
        assert c.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)").ok
        assert c.cmd("STORE 2 +FLAGS.SILENT (\\Seen)").ok
        assert c.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)").ok
        cases = {
            "ALL": [1, 2, 3],
            'FROM "contoso"': [1, 3],
            "FROM bob": [2],
            "FROM ALICE": [1],
            'SUBJECT "QUARTERLY"': [1],
            "SUBJECT Quartals": [2],
            "SUBJECT nomatch": [],
            "BODY fox": [1],
            'BODY "brown fox"': [1],
            "BODY contoso": [],
            "TEXT fabrikam": [2],
            "TEXT fox": [1],
            "HEADER X-Journal-Tag blue": [2],
            'HEADER X-Journal-Tag ""': [1, 2],
            "LARGER 4000": [2],
            "SMALLER 4000": [1, 3],
            f"UID {uids[0]}:{uids[1]}": [1, 2],
            "UID *": [3],
            "2:3": [2, 3],
            "1,*": [1, 3],
            "NOT FROM contoso": [2],
            "OR FROM bob SUBJECT misc": [2, 3],
            "OR (FROM bob) (SUBJECT alpha)": [1, 2],
            "FROM contoso SUBJECT misc": [3],
            "(FROM contoso) NOT DELETED": [1],
            "FLAGGED": [1],
            "UNFLAGGED": [2, 3],
            "SEEN": [2],
            "UNSEEN": [1, 3],
            "DELETED": [3],
            "UNDELETED": [1, 2],
            "ANSWERED": [],
            "UNANSWERED": [1, 2, 3],
            "DRAFT": [],
            "UNDRAFT": [1, 2, 3],
            "KEYWORD foo": [],
            "UNKEYWORD foo": [1, 2, 3],
            "SENTBEFORE 1-Jan-2020": [2],
            "SENTSINCE 1-Jan-2020": [1, 3],
            "SENTON 16-Nov-2026": [1, 3],
            "SENTON 1-Mar-2019": [2],
            "SINCE 1-Jan-2020": [1, 2, 3],
            "BEFORE 1-Jan-2020": [],
            f"SINCE {d(today - datetime.timedelta(days=1))} "
            f"BEFORE {d(today + datetime.timedelta(days=2))}": [1, 2, 3],
            "CHARSET US-ASCII FROM bob": [2],
            "CHARSET UTF-8 FROM bob": [2],
        }
        for key, want in cases.items():
            r = c.cmd(f"SEARCH {key}")
            assert r.ok, (key, r)
            assert sorted(r.search()) == want, (key, r)
            r = c.cmd(f"UID SEARCH {key}")
            assert r.ok, (key, r)
            assert sorted(r.search()) == [uids[i - 1] for i in want], (key, r)
        # 8-bit UTF-8 in a literal, with CHARSET UTF-8
        r = c.cmd_lit("SEARCH CHARSET UTF-8 SUBJECT ", "f\u00fcr".encode())
        assert r.ok and r.search() == [2], r
        r = c.cmd_lit("UID SEARCH CHARSET UTF-8 BODY ", "Gr\u00fc\u00dfe".encode())
        assert r.ok and r.search() == [uids[2]], r
        r = c.cmd_lit("SEARCH CHARSET UTF-8 TEXT ", "\u65e5\u672c".encode())
        assert r.ok and r.search() == [], r
        # an unknown charset: NO [BADCHARSET] (RFC 3501 6.4.4)
        r = c.cmd("SEARCH CHARSET X-NO-SUCH-CHARSET FROM bob")
        assert r.status == "NO" and r.code and r.code.upper().startswith("BADCHARSET"), r
        refused(c.cmd("SEARCH FROMM bob"))
        # after an expunge, sequence numbers shift and UIDs do not
        assert c.cmd("EXPUNGE").expunged() == [3]
        r = c.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert c.cmd("EXPUNGE").expunged() == [1]
        r = c.cmd("SEARCH FROM bob")
        assert r.search() == [1], r
        r = c.cmd("UID SEARCH FROM bob")
        assert r.search() == [uids[1]], r
        c.cmd("LOGOUT")


# ------------------------------------------------------------------ STORE, flags


def test_store_variants(igw):
    mbx, _ = fill(igw, 3)
    with closing(raw_login(igw, mbx, select=True)) as c:
        uids = uid_map(c)

        def flags_of(r):
            return {n: flags(d) for n, d in r.fetches() if "FLAGS" in d}

        r = c.cmd("STORE 1 +FLAGS (\\Flagged)")
        assert r.ok and flags_of(r) == {1: ["\\Flagged"]}, r
        r = c.cmd("STORE 1 +FLAGS (\\Answered \\Draft)")
        assert r.ok and flags_of(r) == {1: sorted(["\\Answered", "\\Draft", "\\Flagged"])}, r
        r = c.cmd("STORE 1 -FLAGS (\\Draft)")
        assert r.ok and flags_of(r) == {1: sorted(["\\Answered", "\\Flagged"])}, r
        r = c.cmd("STORE 1 FLAGS (\\Seen)")  # replace
        assert r.ok and flags_of(r) == {1: ["\\Seen"]}, r
        r = c.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)")
        assert r.ok and not flags_of(r), r
        r = c.cmd("STORE 2:3 FLAGS.SILENT (\\Seen \\Draft)")
        assert r.ok and not flags_of(r), r
        r = c.cmd(f"UID STORE {uids[2]} -FLAGS (\\Draft)")
        assert r.ok, r
        (n, d), = r.fetches()
        assert n == 3 and as_int(d["UID"]) == uids[2] and flags(d) == ["\\Seen"], r
        r = c.cmd(f"UID STORE {uids[1]} FLAGS (\\Deleted \\Seen)")  # getmail's replace
        assert r.ok, r
        r = c.cmd("STORE 1 +FLAGS (\\Seen \\Deleted)")  # fetchmail
        assert r.ok, r
        r = c.cmd("STORE 1 -FLAGS.SILENT (\\Deleted)")
        assert r.ok, r
        # keywords (neomutt stores "Old"): never BAD
        r = c.cmd(f"UID STORE {uids[0]}:{uids[2]} +FLAGS.SILENT (Old)")
        assert r.status in ("OK", "NO"), r
        r = c.cmd("FETCH 1:3 (FLAGS)")
        got = {n: [f for f in flags(d) if f.startswith("\\")] for n, d in r.fetches()}
        want = {1: ["\\Seen"], 2: sorted(["\\Deleted", "\\Seen"]), 3: ["\\Seen"]}
        assert got == want, r
        refused(c.cmd("STORE 1 +FLAGS (\\Bogus"))
        refused(c.cmd("STORE 1 XFLAGS (\\Seen)"))
        assert c.cmd("UNSELECT").ok  # does not expunge
        c.cmd("LOGOUT")
    # flags are stored: another session sees them, and so does one after a restart
    for restart in (False, True):
        if restart:
            igw.restart()
        with closing(raw_login(igw, mbx, select=True)) as c:
            r = c.cmd("FETCH 1:* (FLAGS)")
            got = {n: [f for f in flags(d) if f.startswith("\\")] for n, d in r.fetches()}
            assert got == want, (restart, r)
            c.cmd("LOGOUT")


# ------------------------------------------------------------------ expunge paths


def test_expunge_paths(igw):
    mbx, msgs = fill(igw, 6)
    with closing(raw_login(igw, mbx, select=True)) as c:
        uids = uid_map(c)
        # EXPUNGE reports each removed message, highest first or in renumbered order
        assert c.cmd("STORE 2,4 +FLAGS.SILENT (\\Deleted)").ok
        r = c.cmd("EXPUNGE")
        assert r.ok and r.expunged() in ([4, 2], [2, 3]), r
        assert not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        left = [uids[0], uids[2], uids[4], uids[5]]
        assert uid_map(c) == left
        # UID EXPUNGE removes only the given \Deleted UIDs
        assert c.cmd(f"UID STORE {uids[0]},{uids[2]} +FLAGS.SILENT (\\Deleted)").ok
        r = c.cmd(f"UID EXPUNGE {uids[2]}")
        assert r.ok and r.expunged() == [2], r
        left = [uids[0], uids[4], uids[5]]
        assert uid_map(c) == left
        # UNSELECT does not expunge (uids[0] is still \Deleted)
        assert c.cmd("UNSELECT").ok
        r = c.select()
        assert r.exists() == [3], r
        # CLOSE expunges silently
        r = c.cmd("CLOSE")
        assert r.ok and not r.expunged(), r
        refused(c.cmd("FETCH 1 (UID)"))  # no mailbox selected after CLOSE
        r = c.select()
        assert r.exists() == [2], r
        left = [uids[4], uids[5]]
        assert uid_map(c) == left
        # LOGOUT does not expunge
        assert c.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
        r = c.cmd("LOGOUT")
        assert r.ok and not r.expunged(), r
    bodies = fetch_bodies(igw, mbx)
    assert sorted(bodies) == left
    assert [strip_received(bodies[u]) for u in left] == [msgs[4][1], msgs[5][1]]
    assert igw.show(mbx["id"])["messages"] == 2
    # CLOSE after EXAMINE does not expunge
    with closing(raw_login(igw, mbx)) as c:
        assert c.cmd("EXAMINE INBOX").ok
        assert c.cmd("CLOSE").ok
        c.cmd("LOGOUT")
    assert igw.show(mbx["id"])["messages"] == 2
    # expunged messages are gone for POP3 too
    assert [strip_received(m) for _, m in pop3_fetch_all(igw, mbx)] == [msgs[4][1], msgs[5][1]]


def test_fetchmail_style_renumbering(igw):
    """fetchmail: EXPUNGE right after SELECT, then always message 1, EXPUNGE after each."""
    mbx, msgs = fill(igw, 4)
    got = []
    with closing(raw_login(igw, mbx)) as c:
        assert c.cmd('SELECT "INBOX"').exists() == [4]
        assert c.cmd("EXPUNGE").ok
        r = c.cmd("SEARCH UNSEEN")
        assert r.search() == [1, 2, 3, 4], r
        r = c.cmd("FETCH 1:4 RFC822.SIZE")
        assert len(r.fetches()) == 4, r
        for i in range(4):
            r = c.cmd("FETCH 1 RFC822.HEADER")
            hdr = r.fetches()[0][1]["RFC822.HEADER"]
            r = c.cmd("FETCH 1 BODY.PEEK[TEXT]")
            text = r.fetches()[0][1]["BODY[TEXT]"]
            got.append(hdr + text)
            assert c.cmd("STORE 1 +FLAGS (\\Seen \\Deleted)").ok
            r = c.cmd("EXPUNGE")
            assert r.ok and r.expunged() == [1], r
            assert not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        c.cmd("LOGOUT")
    assert [strip_received(m) for m in got] == [m for _, m in msgs]
    assert message_count(igw, mbx) == 0


# ------------------------------------------------------------------ concurrency, live delivery


def test_concurrent_sessions_see_expunges(igw):
    mbx, msgs = fill(igw, 4)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        uids = uid_map(a)
        assert uid_map(b) == uids
        assert a.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)").ok
        r = a.cmd("EXPUNGE")
        assert r.expunged() == [2], r
        # b learns of it on its next NOOP, with the right sequence number
        r = b.cmd("NOOP")
        assert r.ok and r.expunged() == [2], r
        assert not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        assert uid_map(b) == [uids[0], uids[2], uids[3]]
        # flag changes by a are visible to b (as FETCH or on the next FETCH)
        assert a.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)").ok
        b.cmd("NOOP")
        r = b.cmd("FETCH 1 (FLAGS)")
        assert "\\Flagged" in flags(r.fetches()[0][1]), r
        # a expunges everything; b sees three EXPUNGEs and never "* 0 EXISTS"
        assert a.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)").ok
        r = a.cmd("EXPUNGE")
        assert len(r.expunged()) == 3, r
        assert not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        r = b.cmd("NOOP")
        assert len(r.expunged()) == 3, r
        assert not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        r = b.cmd("UID FETCH 1:* (UID)")
        assert r.ok and r.fetches() == [], r
        # new mail after that: "* 1 EXISTS" in both, and a UID never used before
        send_smtp(igw, mbx["address"], build_message(subject="after expunge"))
        for c in (a, b):
            wait_exists(c, 1)
        r = b.cmd("FETCH 1 (UID)")
        assert as_int(r.fetches()[0][1]["UID"]) > uids[-1], r
        a.cmd("LOGOUT")
        b.cmd("LOGOUT")


def wait_exists(c, n, timeout=1.0):
    """NOOP until `* n EXISTS` arrives; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        r = c.cmd("NOOP")
        assert r.ok, r
        seen += r.untagged
        if n in r.exists():
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no '* {n} EXISTS' within {timeout}s after delivery; got {seen!r}")
        time.sleep(0.05)


def test_fetch_of_message_expunged_by_other_session(igw):
    mbx, msgs = fill(igw, 3)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        uids = uid_map(b)
        assert a.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)").ok
        assert a.cmd("EXPUNGE").expunged() == [3]
        # b has not been told yet: a FETCH must not return another message's data
        r = b.cmd("FETCH 3 (UID BODY.PEEK[])")
        assert r.status in ("OK", "NO"), r
        for n, d in r.fetches():
            if n == 3 and d.get("BODY[]") is not None:  # NIL is allowed (RFC 2180 4.1.3)
                assert strip_received(d["BODY[]"]) == msgs[2][1], "wrong message for seq 3"
        # UID FETCH of the expunged UID: nothing (or the expunge announced first)
        r = b.cmd(f"UID FETCH {uids[2]} (FLAGS)")
        assert r.status in ("OK", "NO"), r
        r = b.cmd("NOOP")
        assert r.ok
        # after the NOOP, seq 3 no longer exists
        refused(b.cmd("FETCH 3 (UID)"))
        refused(b.cmd("STORE 3 +FLAGS (\\Seen)"))
        assert uid_map(b) == uids[:2]
        assert b.cmd("NOOP").ok
        a.cmd("LOGOUT")
        b.cmd("LOGOUT")


def test_sequence_numbers_stable_until_expunge_reported(igw):
    """RFC 3501 7.4.1: no EXPUNGE during FETCH/STORE/SEARCH, so until b is told, b's sequence
    numbers keep meaning what they meant. A STORE \\Deleted by number must never hit the
    neighbouring message (that would delete unread mail). Flags are shared between sessions."""
    mbx, msgs = fill(igw, 4)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        uids = uid_map(b)
        assert a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
        assert a.cmd("EXPUNGE").expunged() == [1]
        r = b.cmd("FETCH 2 (UID)")
        assert r.status in ("OK", "NO"), r
        assert not r.expunged(), f"EXPUNGE sent during FETCH: {r!r}"
        for n, d in r.fetches():
            assert n == 2 and as_int(d["UID"]) == uids[1], (uids, r)
        r = b.cmd(f"SEARCH UID {uids[2]}")
        assert r.ok and r.search() == [3] and not r.expunged(), (uids, r)
        r = b.cmd("STORE 2 +FLAGS (\\Deleted)")
        assert r.status in ("OK", "NO") and not r.expunged(), r
        for n, d in r.fetches():
            assert n == 2 and as_int(d.get("UID", uids[1])) == uids[1], (uids, r)
        stored_ok = r.ok
        r = b.cmd("NOOP")
        assert r.expunged() == [1], r
        # the message b flagged by number 2 is uids[1], and only that one
        r = b.cmd("UID SEARCH DELETED")
        assert r.search() == ([uids[1]] if stored_ok else []), (uids, r)
        # flags are shared: a sees b's \Deleted and expunges it
        r = a.cmd("NOOP")
        r = a.cmd("EXPUNGE")
        assert r.expunged() == ([1] if stored_ok else []), r
        r = b.cmd("NOOP")
        assert r.expunged() == ([1] if stored_ok else []), r
        left = [uids[2], uids[3]] if stored_ok else uids[1:]
        assert uid_map(a) == left and uid_map(b) == left
        a.cmd("LOGOUT")
        b.cmd("LOGOUT")


def test_idle_live_delivery(igw):
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as c:
        tag = c.next_tag()
        c.send(f"{tag} IDLE\r\n")
        cont = c.read_response()
        assert cont.startswith(b"+"), cont
        for n in (2, 3):
            send_smtp(igw, mbx["address"], build_message(subject=f"live {n}"))
            t0 = time.monotonic()
            got = c.read_until(lambda r: re.match(rb"^\* %d EXISTS$" % n, r), timeout=1.0)
            assert time.monotonic() - t0 < 1.0, got
        c.send("DONE\r\n")
        r = c.wait(tag)
        assert r.ok, r
        r = c.cmd("FETCH 1:* (ENVELOPE)")
        assert sorted(n for n, _ in r.fetches()) == [1, 2, 3], r
        subjects = [d["ENVELOPE"][1] for _, d in sorted(r.fetches())]
        assert subjects[1:] == [b"live 2", b"live 3"], subjects
        c.cmd("LOGOUT")


def test_idle_edge_cases(igw):
    """Mail that arrived before IDLE is announced when IDLE starts; DONE pipelined with the
    next command (Thunderbird); IDLE in EXAMINE mode and with no mailbox selected."""
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as c:
        send_smtp(igw, mbx["address"], build_message(subject="before idle"))
        time.sleep(0.2)
        c.send("i1 IDLE\r\n")
        got = c.read_until(lambda r: r.startswith(b"+"), timeout=1.0)
        if not any(re.match(rb"^\* 2 EXISTS$", r) for r in got):
            c.read_until(lambda r: re.match(rb"^\* 2 EXISTS$", r), timeout=1.0)
        c.send("DONE\r\nx1 FETCH 2 (UID)\r\nx2 NOOP\r\n")
        res, untagged = c.wait_tags(["i1", "x1", "x2"])
        assert all(r.ok for r in res.values()), res
        assert any(re.match(rb"^\* 2 FETCH \(UID \d+\)$", u) for u in untagged), untagged
        # EXAMINE'd mailboxes get live delivery too
        assert c.cmd("EXAMINE INBOX").ok
        c.send("i2 IDLE\r\n")
        assert c.read_response().startswith(b"+")
        send_smtp(igw, mbx["address"], build_message(subject="while examining"))
        c.read_until(lambda r: re.match(rb"^\* 3 EXISTS$", r), timeout=1.0)
        c.send("DONE\r\n")
        assert c.wait("i2").ok
        # IDLE with no mailbox selected is allowed (RFC 2177: authenticated state)
        assert c.cmd("UNSELECT").ok
        c.send("i3 IDLE\r\n")
        r = c.read_response()
        if r.startswith(b"+"):
            c.send("DONE\r\n")
            assert c.wait("i3").ok
        else:
            assert re.match(rb"^i3 (NO|BAD)", r), r
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")


def test_noop_live_delivery_and_status(igw):
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as a, closing(raw_login(igw, mbx)) as b:
        send_smtp(igw, mbx["address"], build_message(subject="live via noop"))
        wait_exists(a, 2)
        r = b.cmd("STATUS INBOX (MESSAGES UIDNEXT)")
        assert re.search(rb"MESSAGES 2", r.lines("STATUS")[0]), r
        a.cmd("LOGOUT")
        b.cmd("LOGOUT")


def test_idle_sees_expunge_from_other_session(igw):
    mbx, _ = fill(igw, 3)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        tag = b.next_tag()
        b.send(f"{tag} IDLE\r\n")
        assert b.read_response().startswith(b"+")
        assert a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
        assert a.cmd("EXPUNGE").expunged() == [1]
        got = b.read_until(lambda r: re.match(rb"^\* 1 EXPUNGE$", r), timeout=5)
        assert not any(re.match(rb"\* 0 EXISTS", u) for u in got), got
        b.send("DONE\r\n")
        r = b.wait(tag)
        assert r.ok and not any(re.match(rb"\* 0 EXISTS", u) for u in r.untagged), r
        assert len(uid_map(b)) == 2


# ------------------------------------------------------------------ UIDVALIDITY, restart


@pytest.mark.parametrize("how", ["restart", "rebuild-index", "kill9"])
def test_uidvalidity_and_uids_stable(igw, how):
    mbx, msgs = fill(igw, 4)
    meta_items = "UID INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE"
    with closing(raw_login(igw, mbx, select=True)) as c:
        assert c.cmd("STORE 4 +FLAGS.SILENT (\\Deleted)").ok
        assert c.cmd("EXPUNGE").expunged() == [4]  # the highest UID is gone
        assert c.cmd("STORE 1 +FLAGS.SILENT (\\Seen \\Flagged)").ok
        assert c.cmd("STORE 2 +FLAGS.SILENT (\\Answered)").ok
        r = c.select()
        uv = r.code_value("UIDVALIDITY")
        uidnext = r.code_value("UIDNEXT")
        uids = uid_map(c)
        meta = sorted(c.cmd(f"FETCH 1:* ({meta_items})").fetches())
        flags_before = {n: flags(d) for n, d in c.cmd("FETCH 1:* (FLAGS)").fetches()}
        c.cmd("LOGOUT")
    before = fetch_bodies(igw, mbx)
    assert len(uids) == 3
    if how == "restart":
        igw.restart()
    elif how == "kill9":
        time.sleep(2)  # index commits become durable within a second (README)
        igw.kill9()
        igw.start()
    else:
        igw.stop()
        (igw.data_dir / "index.redb").unlink()
        rc, out, err = igw.cli_raw("rebuild-index")
        assert rc == 0, (out, err)
        igw.start()
    with closing(raw_login(igw, mbx)) as c:
        r = c.select()
        assert r.code_value("UIDVALIDITY") == uv, (uv, r)
        # UIDNEXT may only grow (UIDs are reserved in blocks), never shrink
        assert int(r.code_value("UIDNEXT")[0]) >= int(uidnext[0]), (uidnext, r)
        assert uid_map(c) == uids
        # INTERNALDATE, sizes, ENVELOPE and BODYSTRUCTURE do not change (offlineimap, mbsync)
        assert sorted(c.cmd(f"FETCH 1:* ({meta_items})").fetches()) == meta
        flags_after = {n: flags(d) for n, d in c.cmd("FETCH 1:* (FLAGS)").fetches()}
        assert flags_after == flags_before, f"flags changed by {how}"
        c.cmd("LOGOUT")
    assert fetch_bodies(igw, mbx) == before
    assert igw.show(mbx["id"])["uidvalidity"] == int(uv[0])
    # new mail gets a UID above every UID ever used (also the expunged one)
    send_smtp(igw, mbx["address"], build_message(subject="after " + how))
    after = fetch_bodies(igw, mbx)
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0] >= int(uidnext[0]), (new, uidnext)


# ------------------------------------------------------------------ pipelining, logout, limits


def test_pipelined_commands(igw):
    mbx, msgs = fill(igw, 2)
    with closing(raw_login(igw, mbx)) as c:
        c.send(b"p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1 (UID)\r\n"
               b"p4 UID FETCH 1:* (FLAGS)\r\np5 SEARCH ALL\r\np6 FETCH 2 (BODY.PEEK[])\r\n"
               b"p7 STATUS INBOX (MESSAGES)\r\np8 NOOP\r\n")
        results, untagged = c.wait_tags([f"p{i}" for i in range(1, 9)])
        for r in results.values():
            assert r.ok, r
        assert b"* 2 EXISTS" in untagged, untagged
        assert b"* SEARCH 1 2" in untagged, untagged
        fetched = [f for f in (parse_fetch(u) for u in untagged) if f and "BODY[]" in f[1]]
        assert len(fetched) == 1 and fetched[0][0] == 2, untagged
        assert strip_received(fetched[0][1]["BODY[]"]) == msgs[1][1]
        c.cmd("LOGOUT")


def test_logout(igw):
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as c:
        tag = c.next_tag()
        c.send(f"{tag} LOGOUT\r\n")
        first = c.read_response()
        assert first.startswith(b"* BYE"), first
        assert c.read_response().startswith(f"{tag} OK".encode())
        assert c.closed_by_server(5)
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:  # before login too
        r = c.cmd("LOGOUT")
        assert r.ok and r.lines("BYE"), r


def test_bye_on_shutdown(igw):
    mbx, _ = fill(igw, 1)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        tag = b.next_tag()
        b.send(f"{tag} IDLE\r\n")
        assert b.read_response().startswith(b"+")
        t0 = time.monotonic()
        assert igw.stop() == 0
        assert time.monotonic() - t0 < 15
        for c in (a, b):
            assert c.closed_by_server(5)
            assert re.search(rb"(^|\r\n)\* BYE", c.buf), c.buf


def test_max_sessions_per_mailbox(make_igw):
    gw = make_igw(imap={"max_sessions_per_mailbox": 2})
    mbx, _ = fill(gw, 1)
    a = raw_login(gw, mbx, select=True)
    b = raw_login(gw, mbx, select=True)
    with closing(a), closing(b):
        with closing(RawIMAP(gw.imaps_port, implicit_tls=True)) as c:
            r = c.cmd(f'LOGIN {mbx["id"]} {quote(mbx["password"])}')
            if r.ok:
                r = c.cmd("SELECT INBOX")
            assert r.status == "NO", f"a third session on the mailbox was allowed: {r!r}"
            assert c.cmd("NOOP").ok
        # the two sessions still work; after one logs out and the other just drops its
        # connection, both slots are free again
        assert a.cmd("NOOP").ok and b.cmd("NOOP").ok
        a.cmd("LOGOUT")
        b.sock.close()
        deadline = time.monotonic() + 5
        held = []
        try:
            while len(held) < 2:
                c = RawIMAP(gw.imaps_port, implicit_tls=True)
                r = c.cmd(f'LOGIN {mbx["id"]} {quote(mbx["password"])}')
                if r.ok:
                    r = c.cmd("SELECT INBOX")
                if r.ok:
                    held.append(c)
                    continue
                c.close()
                assert time.monotonic() < deadline, f"session slot not freed: {r!r}"
                time.sleep(0.2)
        finally:
            for c in held:
                c.close()
        # another mailbox is not affected
        other, _ = fill(gw, 1)
        with closing(raw_login(gw, other, select=True)) as c:
            assert c.cmd("NOOP").ok


def test_max_connections(make_igw):
    gw = make_igw(imap={"max_connections": 2})
    conns = [RawIMAP(gw.imaps_port, implicit_tls=True), RawIMAP(gw.imap_port)]
    try:
        for c in conns:
            assert c.greeting.startswith(b"* OK"), c.greeting
        try:
            extra = RawIMAP(gw.imaps_port, implicit_tls=True)
        except (ConnectionError, OSError, ssl.SSLError):
            extra = None  # closed without a greeting: acceptable
        if extra is not None:
            with closing(extra):
                assert extra.greeting.startswith(b"* BYE"), extra.greeting
                assert extra.closed_by_server(5)
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                with closing(RawIMAP(gw.imaps_port, implicit_tls=True)) as c:
                    if c.greeting.startswith(b"* OK"):
                        break
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            assert time.monotonic() < deadline, "no connection accepted after one was closed"
            time.sleep(0.2)
    finally:
        for c in conns:
            c.close()


def test_idle_timeout(make_igw):
    gw = make_igw(imap={"idle_timeout_secs": 2})
    mbx, _ = fill(gw, 1)
    with closing(raw_login(gw, mbx, select=True)) as c:
        t0 = time.monotonic()
        assert c.closed_by_server(15), "session not closed after the idle timeout"
        dt = time.monotonic() - t0
        assert 1.5 <= dt <= 10, dt
        assert re.search(rb"(^|\r\n)\* BYE", c.buf), c.buf
    # an active session (NOOP every second) is kept
    with closing(raw_login(gw, mbx, select=True)) as c:
        for _ in range(4):
            time.sleep(1)
            assert c.cmd("NOOP").ok


def test_many_sessions_in_parallel(igw):
    """Ten clients at once, each on its own mailbox, fetch and delete."""
    boxes = [fill(igw, 2) for _ in range(5)]
    errors = []

    def worker(mbx, msgs):
        try:
            with closing(raw_login(igw, mbx, select=True)) as c:
                r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
                got = [strip_received(d["BODY[]"]) for _, d in sorted(r.fetches())]
                assert got == [m for _, m in msgs], "wrong bodies"
                assert c.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)").ok
                assert c.cmd("CLOSE").ok
                c.cmd("LOGOUT")
        except Exception as e:  # reported below
            errors.append(repr(e))

    def reader(mbx):
        try:
            for _ in range(3):
                with closing(raw_login(igw, mbx)) as c:
                    assert c.cmd("STATUS INBOX (MESSAGES)").ok
                    c.cmd("LOGOUT")
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=b) for b in boxes]
    threads += [threading.Thread(target=reader, args=(igw.create_mailbox(),)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for mbx, _ in boxes:
        assert igw.show(mbx["id"])["messages"] == 0


# ------------------------------------------------------------------ client replays, parity with POP3


def test_thunderbird_session_replay(igw):
    """Thunderbird 153's two connections (acme-and-clients.md 5.1), lowercase as it sends them,
    with its delete model without MOVE: STORE \\Deleted + EXPUNGE."""
    mbx, msgs = fill(igw, 3)
    ir = f"\0{mbx['id']}\0{mbx['password']}".encode()
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c1:
        tag = c1.next_tag()
        c1.send(f"{tag} authenticate PLAIN\r\n")
        assert c1.read_response().startswith(b"+")
        c1.send(base64.b64encode(ir) + b"\r\n")
        r = c1.wait(tag)
        assert r.ok and "IMAP4REV1" in caps_of(r.text), r
        for line in ("namespace", 'ID ("name" "Thunderbird" "version" "153.7.0")',
                     'list (subscribed) "" "*"', 'list "" "INBOX"', 'list "" "Trash"'):
            r = c1.cmd(line)
            assert r.ok, (line, r)
        r = c1.cmd('create "Trash"')
        assert r.status == "NO", r
        assert c1.cmd('subscribe "Trash"').status in ("OK", "NO")
        assert c1.cmd('list "" "INBOX"').ok
        c1.cmd("logout")
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c2:
        r = c2.cmd(f"authenticate PLAIN {base64.b64encode(ir).decode()}")
        assert r.ok, r
        assert c2.cmd('ID ("name" "Thunderbird" "version" "153.7.0")').ok
        r = c2.cmd('select "INBOX"')
        assert r.ok and r.exists() == [3], r
        r = c2.cmd("UID fetch 1:* (FLAGS)")
        assert r.ok and len(r.fetches()) == 3, r
        uids = sorted(as_int(d["UID"]) for _, d in r.fetches())
        hdrs = ("UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
                "Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
                "Reply-To Received)]")
        r = c2.cmd(f"UID fetch {uids[0]}:{uids[-1]} ({hdrs})")
        assert r.ok and len(r.fetches()) == 3, r
        assert c2.cmd("noop").ok
        r = c2.cmd(f"UID fetch {uids[0]}:{uids[-1]} (UID RFC822.SIZE BODY.PEEK[])")
        got = sorted((as_int(d["UID"]), d["BODY[]"]) for _, d in r.fetches())
        assert [strip_received(b) for _, b in got] == [m for _, m in msgs]
        tag = c2.next_tag()
        c2.send(f"{tag} IDLE\r\n")
        assert c2.read_response().startswith(b"+")
        c2.send("DONE\r\n")
        assert c2.wait(tag).ok
        r = c2.cmd(f"uid store {uids[2]} +Flags (\\Seen)")
        assert r.ok, r
        r = c2.cmd(f'uid move {uids[2]} "Trash"')  # not advertised: refused, nothing lost
        assert r.status == "NO", r
        r = c2.cmd(f"uid store {uids[2]} +FLAGS (\\Deleted)")
        assert r.ok, r
        r = c2.cmd("expunge")
        assert r.ok and r.expunged() == [3], r
        r = c2.cmd(f"UID fetch {uids[2] + 1}:* (FLAGS)")
        assert r.ok, r
        c2.cmd("logout")
    assert message_count(igw, mbx) == 2


def test_ios_session_replay(igw):
    """iPhone Mail: ID with os fields, then NAMESPACE and LIST RETURN (SPECIAL-USE) pipelined."""
    mbx, _ = fill(igw, 1)
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        r = c.cmd('ID ("name" "iPhone Mail" "version" "22B83" "os" "iOS" "os-version" "18.1")')
        assert r.ok and r.lines("ID"), r
        c.login(mbx["id"], mbx["password"])
        c.send(b'i1 NAMESPACE\r\ni2 LIST "" "*" RETURN (SPECIAL-USE)\r\ni3 SELECT INBOX\r\n')
        res, untagged = c.wait_tags(["i1", "i2", "i3"])
        assert all(r.ok for r in res.values()), res
        assert any(u.startswith(b"* NAMESPACE") for u in untagged), untagged
        assert len([u for u in untagged if u.startswith(b"* LIST")]) == 1, untagged
        assert b"* 1 EXISTS" in untagged, untagged


def test_suspended_mailbox_still_collectable(igw):
    mbx, msgs = fill(igw, 2)
    igw.cli("mailbox", "suspend", mbx["id"])
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert [strip_received(d["BODY[]"]) for _, d in sorted(r.fetches())] == \
            [m for _, m in msgs]
        assert c.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)").ok
        assert c.cmd("CLOSE").ok
        c.cmd("LOGOUT")
    assert igw.show(mbx["id"])["messages"] == 0


def test_reset_password(igw):
    mbx, msgs = fill(igw, 1)
    new = igw.cli("mailbox", "reset-password", mbx["id"])["password"]
    _, r = _failed_login(igw, mbx["id"], mbx["password"])
    assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", r
    fresh = build_message(subject="after reset")
    send_smtp(igw, mbx["address"], fresh)
    # old mail (sealed to the old key) is no longer served; new mail is
    assert [strip_received(b) for b in fetch_bodies(igw, dict(mbx, password=new)).values()] \
        == [fresh]


def test_pop3_and_imap_on_one_mailbox(igw):
    """POP3 and IMAP sessions on the same mailbox never hand out the wrong message, and a POP3
    deletion reaches the IMAP session as an EXPUNGE."""
    import poplib

    from jgharness import pop3_login, pop3_retr
    mbx, msgs = fill(igw, 3)
    with closing(raw_login(igw, mbx, select=True)) as a:
        uids = uid_map(a)
        p = pop3_login(igw, mbx["id"], mbx["password"])
        try:
            assert p.stat()[0] == 3
            assert a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
            assert a.cmd("EXPUNGE").expunged() == [1]
            try:
                m1 = pop3_retr(p, 1)
                assert strip_received(m1) == msgs[0][1], "POP3 RETR 1 returned another message"
            except poplib.error_proto:
                pass  # gone: an -ERR is right
            assert strip_received(pop3_retr(p, 2)) == msgs[1][1]
            p.dele(3)
            p.quit()
        finally:
            with contextlib.suppress(Exception):
                p.close()
        deadline = time.monotonic() + 2
        seen = []
        while True:
            r = a.cmd("NOOP")
            seen += r.untagged
            if r.expunged():
                assert r.expunged() == [2], seen
                break
            assert time.monotonic() < deadline, f"POP3 deletion not reported: {seen!r}"
            time.sleep(0.1)
        assert uid_map(a) == [uids[1]]
        a.cmd("LOGOUT")
    assert [strip_received(b) for b in fetch_bodies(igw, mbx).values()] == [msgs[1][1]]


class View:
    """A client's model of the selected mailbox, updated only from untagged responses."""

    def __init__(self, uids):
        self.uids = list(uids)  # None for messages announced by EXISTS, UID not yet known

    def apply(self, untagged, during=""):
        for u in untagged:
            m = re.match(rb"^\* (\d+) (EXISTS|EXPUNGE)$", u, re.I)
            if not m:
                continue
            n, what = int(m.group(1)), m.group(2).upper()
            if what == b"EXPUNGE":
                assert during not in ("FETCH", "STORE", "SEARCH"), f"EXPUNGE during {during}"
                assert 1 <= n <= len(self.uids), (n, len(self.uids))
                del self.uids[n - 1]
            else:
                assert n >= len(self.uids), f"EXISTS went down without EXPUNGE: {n} < {self.uids}"
                assert n > 0 or not self.uids, "* 0 EXISTS"
                self.uids += [None] * (n - len(self.uids))

    def check(self, c):
        r = c.cmd("FETCH 1:* (UID)") if self.uids else c.cmd("NOOP")
        assert r.ok, r
        self.apply(r.untagged, "FETCH")
        got = [as_int(d["UID"]) for _, d in sorted(r.fetches()) if "UID" in d]
        if self.uids:
            assert len(got) == len(self.uids), (got, self.uids)
            for want, have in zip(self.uids, got):
                assert want is None or want == have, (self.uids, got)
            self.uids = got


def test_concurrent_sessions_model(igw):
    """30 random steps with two sessions and SMTP deliveries: each session's view, built only
    from the EXISTS/EXPUNGE it was sent, always matches the mailbox."""
    import random
    rnd = random.Random(3)
    mbx, _ = fill(igw, 4)
    a = raw_login(igw, mbx, select=True)
    b = raw_login(igw, mbx, select=True)
    with closing(a), closing(b):
        va, vb = View(uid_map(a)), View(uid_map(b))
        for step in range(30):
            op = rnd.choice(["deliver", "expunge-a", "expunge-b", "uid-expunge-b", "noop"])
            if op == "deliver":
                send_smtp(igw, mbx["address"], build_message(subject=f"step {step}"))
            elif op in ("expunge-a", "expunge-b", "uid-expunge-b"):
                c, v = (a, va) if op == "expunge-a" else (b, vb)
                if v.uids:
                    n = rnd.randint(1, len(v.uids))
                    r = c.cmd(f"STORE {n} +FLAGS.SILENT (\\Deleted)")
                    assert r.ok, r
                    v.apply(r.untagged, "STORE")
                    r = c.cmd("UID EXPUNGE 1:*" if op == "uid-expunge-b" else "EXPUNGE")
                    assert r.ok, r
                    v.apply(r.untagged)
            for c, v in ((a, va), (b, vb)):
                r = c.cmd("NOOP")
                v.apply(r.untagged)
            time.sleep(0.05)
            for c, v in ((a, va), (b, vb)):
                r = c.cmd("NOOP")
                v.apply(r.untagged)
                v.check(c)
        a.cmd("LOGOUT")
        b.cmd("LOGOUT")


def test_stalled_reader_blocks_nobody(igw):
    """A client that requests 24 MB and stops reading must not hold up SMTP intake, other
    IMAP sessions on the same mailbox, or its own data (complete once it reads again)."""
    mbx = igw.create_mailbox()
    big = []
    for i in range(12):
        m = build_message(subject=f"big {i}", body=(f"{i:02d}" + "x" * 998 + "\r\n") * 2000)
        send_smtp(igw, mbx["address"], m)
        big.append(m)
    a = raw_login(igw, mbx, select=True)
    with closing(a):
        a.send("s1 UID FETCH 1:* (BODY.PEEK[])\r\n")
        time.sleep(1.0)
        t0 = time.monotonic()
        late = build_message(subject="while a reader stalls")
        send_smtp(igw, mbx["address"], late)
        with closing(raw_login(igw, mbx, select=True)) as b:
            r = b.cmd("FETCH 13 (BODY.PEEK[])")
            assert strip_received(r.fetches()[0][1]["BODY[]"]) == late
            assert b.cmd("STORE 1 +FLAGS (\\Flagged)").ok
            b.cmd("LOGOUT")
        assert time.monotonic() - t0 < 10, "intake or a second session waited for the stalled one"
        # the stalled client now reads everything, intact
        a.sock.settimeout(60)
        got = a.read_until(lambda r: r.startswith(b"s1 "), timeout=60)
        assert got[-1].startswith(b"s1 OK"), got[-1]
        bodies = {}
        for u in got:
            f = parse_fetch(u)
            if f and "BODY[]" in f[1]:
                bodies[f[0]] = strip_received(f[1]["BODY[]"])
        assert [bodies[n] for n in range(1, 13)] == big
        a.cmd("LOGOUT")


def test_no_plaintext_under_data_dir_after_imap(igw):
    """ENVELOPE/BODYSTRUCTURE are cached in the index: the cache must not put subjects,
    addresses or body text under data_dir in clear (encryption at rest, CONTRACT.md)."""
    tag = os.urandom(8).hex()
    markers = {
        "subject": f"SubjectMarker{tag}",
        "body": f"BodyMarker{tag}",
        "sender": f"sender.{tag}@contoso.example",
        "name": f"Personal{tag}",
        "to": f"to.{tag}@fabrikam.example",
        "msgid": f"msgid.{tag}@contoso.example",
        "filename": f"attachment{tag}.pdf",
        "boundary": f"boundary{tag}",
    }
    mbx = igw.create_mailbox()
    msg = build_message(
        subject=markers["subject"], sender=f'"{markers["name"]}" <{markers["sender"]}>',
        to=markers["to"], msgid=f"<{markers['msgid']}>",
        content_type=f'multipart/mixed; boundary="{markers["boundary"]}"', cte=None,
        body=(f"--{markers['boundary']}\r\nContent-Type: text/plain\r\n\r\n"
              f"{markers['body']}\r\n"
              f"--{markers['boundary']}\r\nContent-Type: application/pdf; "
              f'name="{markers["filename"]}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
              f"JVBERi0xLjQK\r\n--{markers['boundary']}--\r\n"))
    for _ in range(2):
        send_smtp(igw, mbx["address"], msg)
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
                  "(SUBJECT FROM)])")
        assert r.ok and len(r.fetches()) == 2, r
        assert r.fetches()[0][1]["ENVELOPE"][1] == markers["subject"].encode()
        r = c.cmd(f"SEARCH SUBJECT {markers['subject']} BODY {markers['body']}")
        assert r.search() == [1, 2], r
        assert c.cmd("STORE 1 +FLAGS (\\Seen \\Flagged)").ok
        c.cmd("LOGOUT")
    time.sleep(1.5)  # let the index commit
    for phase in ("running", "stopped"):
        if phase == "stopped":
            igw.stop()
        checked = 0
        for root, dirs, files in os.walk(igw.data_dir):
            for name in dirs + files:
                for key, mk in markers.items():
                    assert mk not in name, f"{key} marker in a file name: {root}/{name}"
            for name in files:
                path = os.path.join(root, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                checked += 1
                for key, mk in markers.items():
                    for form in (mk.encode(), mk.lower().encode(), mk.upper().encode()):
                        assert form not in data, f"{key} marker in plaintext in {path} ({phase})"
        assert checked >= 3, f"only {checked} files under {igw.data_dir}"
    rc, out, err = igw.cli_raw("check")
    assert rc == 0, (out, err)


def test_kill9_during_flag_changes_and_expunge(igw):
    """Flags live in the spool (file names): kill -9 while a client flips flags on 100 messages
    and expunges a few; after restart no message is lost or duplicated, check passes."""
    mbx = igw.create_mailbox()
    msgs = []
    with contextlib.closing(smtp_connect(igw)) as s:
        for i in range(100):
            m = build_message(subject=f"flip {i}", body=f"flip body {i}\r\n")
            s.sendmail("journal@contoso.example", [mbx["address"]], m)
            msgs.append(m)
    before = fetch_bodies(igw, mbx)
    assert len(before) == 100
    uids = sorted(before)
    c = raw_login(igw, mbx, select=True)
    stop = threading.Event()
    errors = []

    def flipper():
        try:
            i = 0
            while not stop.is_set():
                op = "+" if i % 2 == 0 else "-"
                c.send(f"f{i} STORE 1:* {op}FLAGS.SILENT (\\Seen \\Flagged)\r\n")
                c.wait(f"f{i}")
                i += 1
        except (ConnectionError, OSError, AssertionError, ssl.SSLError):
            pass  # the server went away
        except Exception as e:
            errors.append(repr(e))

    # expunge the first five UIDs, then flip flags and crash in the middle of it
    assert c.cmd(f"UID STORE {uids[0]}:{uids[4]} +FLAGS.SILENT (\\Deleted)").ok
    assert c.cmd(f"UID EXPUNGE {uids[0]}:{uids[4]}").ok
    t = threading.Thread(target=flipper)
    t.start()
    time.sleep(1.0)
    igw.kill9()
    stop.set()
    t.join(30)
    c.close()
    assert not errors, errors
    igw.start()
    after = fetch_bodies(igw, mbx)
    assert sorted(after) == uids[5:], "messages lost or resurrected after kill -9"
    assert all(after[u] == before[u] for u in uids[5:])
    with closing(raw_login(igw, mbx, select=True)) as c2:
        r = c2.cmd("FETCH 1:* (FLAGS)")
        assert r.ok and len(r.fetches()) == 95, r
        r = c2.cmd("SEARCH DELETED")
        assert r.search() == [], r
        c2.cmd("LOGOUT")
    assert igw.show(mbx["id"])["messages"] == 95
    igw.stop()
    rc, out, err = igw.cli_raw("check")
    assert rc == 0, (out, err)


def test_idle_many_sessions_and_bursts(igw):
    """20 sessions IDLE on one mailbox (the default per-mailbox limit) all see a delivery;
    a burst of 200 deliveries ends with the right EXISTS count in an IDLE session."""
    mbx, _ = fill(igw, 1)
    sessions = []
    try:
        for i in range(20):
            c = raw_login(igw, mbx, select=True)
            c.send(f"i{i} IDLE\r\n")
            assert c.read_response().startswith(b"+")
            sessions.append(c)
        send_smtp(igw, mbx["address"], build_message(subject="to all idlers"))
        t0 = time.monotonic()
        for c in sessions:
            left = max(0.1, 2.0 - (time.monotonic() - t0))
            c.read_until(lambda r: r == b"* 2 EXISTS", timeout=left)
        for c in sessions[1:]:
            c.send("DONE\r\n")
            c.close()
        c = sessions[0]
        with contextlib.closing(smtp_connect(igw)) as s:
            for i in range(200):
                s.sendmail("journal@contoso.example", [mbx["address"]],
                           build_message(subject=f"burst {i}"))
        seen = c.read_until(lambda r: r == b"* 202 EXISTS", timeout=3.0)
        counts = [int(r.split()[1]) for r in seen if re.match(rb"^\* \d+ EXISTS$", r)]
        assert counts == sorted(counts), f"EXISTS went backwards: {counts}"
        c.send("DONE\r\n")
        assert c.wait("i0").ok
        assert len(uid_map(c)) == 202
        c.cmd("LOGOUT")
    finally:
        for c in sessions:
            c.close()


def test_rebuild_index_while_session_open(igw):
    mbx, msgs = fill(igw, 3)
    with closing(raw_login(igw, mbx, select=True)) as c:
        uv = c.cmd("STATUS INBOX (UIDVALIDITY)").lines("STATUS")
        uids = uid_map(c)
        assert c.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)").ok
        rc, out, err = igw.cli_raw("rebuild-index")
        assert rc == 0, (out, err)
        r = c.cmd("NOOP")
        assert r.ok and not r.expunged(), f"spurious EXPUNGE after rebuild-index: {r!r}"
        assert uid_map(c) == uids
        r = c.cmd("FETCH 1:* (FLAGS BODY.PEEK[])")
        assert [strip_received(d["BODY[]"]) for _, d in sorted(r.fetches())] == \
            [m for _, m in msgs]
        assert {n: flags(d) for n, d in r.fetches()}[2] == ["\\Flagged"], r
        assert c.cmd("STATUS INBOX (UIDVALIDITY)").lines("STATUS") == uv
        send_smtp(igw, mbx["address"], build_message(subject="after live rebuild"))
        wait_exists(c, 4)
        c.cmd("LOGOUT")


@pytest.mark.parametrize("action", ["delete", "reset-password"])
def test_mailbox_cli_changes_under_open_session(igw, action):
    """The admin deletes the mailbox or resets its password while a client has it selected:
    the session learns (EXPUNGEs, or BYE) or goes on with the messages it had, never serves
    another message's data, and the server stays up."""
    mbx, msgs = fill(igw, 2)
    other, other_msgs = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as c:
        if action == "delete":
            igw.cli("mailbox", "suspend", mbx["id"])
            igw.cli("mailbox", "delete", mbx["id"])
        else:
            igw.cli("mailbox", "reset-password", mbx["id"])
        try:
            r = c.cmd("NOOP")
            if r.ok:
                r = c.cmd("FETCH 1:* (BODY.PEEK[])")
                for _, d in r.fetches():
                    body = d.get("BODY[]")
                    assert body is None or strip_received(body) in [m for _, m in msgs], r
        except ConnectionError:
            pass  # the server closed the session: acceptable
    _, r = _failed_login(igw, mbx["id"], mbx["password"])
    assert r.status == "NO", r
    assert [strip_received(b) for b in fetch_bodies(igw, other).values()] == \
        [m for _, m in other_msgs]


def test_reset_password_revokes_open_sessions(igw):
    """After `mailbox reset-password` (e.g. the old password leaked), a session that logged in
    with the old password must not be able to delete mail sealed to the new key: it is closed,
    or the new mail stays out of its reach."""
    mbx, _ = fill(igw, 1)
    old = raw_login(igw, mbx, select=True)
    with closing(old):
        new_pw = igw.cli("mailbox", "reset-password", mbx["id"])["password"]
        fresh = build_message(subject="sealed to the new key")
        send_smtp(igw, mbx["address"], fresh)
        time.sleep(0.3)
        outcome = []
        try:
            for line in ("NOOP", "STORE 1:* +FLAGS.SILENT (\\Deleted)", "EXPUNGE",
                         "UID STORE 1:* +FLAGS.SILENT (\\Deleted)", "UID EXPUNGE 1:*", "CLOSE"):
                r = old.cmd(line)
                outcome.append(f"{line} -> {r.status} {r.text[:60]!r} {r.untagged[:3]!r}")
        except ConnectionError:
            outcome.append("closed")
    left = [strip_received(b) for b in fetch_bodies(igw, dict(mbx, password=new_pw)).values()]
    assert left == [fresh], ("a session with the old password deleted new mail:\n"
                             + "\n".join(outcome))
