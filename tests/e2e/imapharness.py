"""IMAP helpers for the journalgate end-to-end suite (issue 3).

Builds on jgharness (the gateway, the socket line client, message builders) and conftest:

`make_igw(overrides=None, start=True, data_dir=None, imap=None)`  fixture: a gateway whose
    `[imap]` section listens on two free loopback ports (STARTTLS and implicit TLS); extra
    `[imap]` keys (max_connections, idle_timeout_secs, ...) go in `imap={...}`. The ports are
    `g.imap_port` and `g.imaps_port`.
`igw`       fixture: `make_igw()` with the defaults.
`RawIMAP`   a line-level IMAP client (literals handled) for exact protocol checks, on
    jgharness.LineClient; `raw_connect`/`raw_login` open one on a gateway.
`parse_sexp`, `parse_fetch`, `fetch_items`  parse FETCH responses (ENVELOPE, BODYSTRUCTURE, ...).
`imaplib_connect`, `imaplib_login`  the standard library client.

Test modules import the fixtures: `from imapharness import igw, make_igw  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import socket
import ssl
import time

import pytest

from jgharness import (  # noqa: F401  (build_message, strip_received: re-exported for tests)
    HOSTNAME, SOCK_TIMEOUT, Gateway, LineClient, build_message, free_port, send_smtp,
    strip_received, unverified_ctx,
)

# imaplib refuses lines over 1 MB by default; a corpus message can have longer literals lines
imaplib._MAXLINE = 1 << 24

TAGGED_RE = re.compile(rb"^(\S+) (OK|NO|BAD)\b ?(.*)$", re.S)
CODE_RE = re.compile(rb"^\[([^\]]*)\]")


# --------------------------------------------------------------------------- gateway


def imap_overrides(overrides: dict | None = None, imap: dict | None = None):
    """Return (overrides, imap_port, imaps_port) with a listening [imap] section."""
    ov = dict(overrides or {})
    p, ps = free_port(), free_port()
    section = {"listen": [f"127.0.0.1:{p}"], "listen_tls": [f"127.0.0.1:{ps}"]}
    section.update(ov.pop("imap", {}) or {})
    section.update(imap or {})
    ov["imap"] = section
    return ov, p, ps


@pytest.fixture
def make_igw(make_gw):
    def factory(overrides: dict | None = None, start=True, data_dir=None, imap=None) -> Gateway:
        for attempt in range(3):
            ov, p, ps = imap_overrides(overrides, imap)
            g = make_gw(ov, start=False, data_dir=data_dir)
            g.ports["imap"], g.ports["imaps"] = p, ps  # g.imap_port, g.imaps_port
            if not start:
                return g
            try:
                return g.start()
            except AssertionError as e:
                # a free port taken by another process between probing and binding: retry
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    return factory


@pytest.fixture
def igw(make_igw):
    return make_igw()


def self_signed_cert(gw: Gateway):
    """Path of the gateway's self-signed certificate (PEM)."""
    p = gw.data_dir / "tls" / "self-signed.crt"
    assert p.exists(), f"no self-signed certificate at {p}"
    return p


def served_cert_pem(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            return ssl.DER_cert_to_PEM_cert(t.getpeercert(binary_form=True))


# --------------------------------------------------------------------------- messages


def fill(gw: Gateway, n=3, mbx=None, prefix="imap-marker"):
    """Deliver n small distinct messages over SMTP. Returns (mbx, [(marker, bytes)])."""
    mbx = mbx or gw.create_mailbox()
    msgs = []
    for i in range(n):
        marker = f"{prefix}-{i}-{os.urandom(5).hex()}"
        msg = build_message(subject=marker, body=f"body of {marker}\r\nsecond line\r\n")
        send_smtp(gw, mbx["address"], msg)
        msgs.append((marker, msg))
    return mbx, msgs


# --------------------------------------------------------------------------- parsing


class Atom(str):
    """An IMAP atom (as opposed to a string, which parses to bytes)."""


class ParseError(AssertionError):
    pass


def parse_sexp(data: bytes, pos: int = 0, until_close=False):
    """Parse a sequence of IMAP values (atoms, quoted strings, literals, NIL, lists).
    Returns (list, pos). Strings and literals -> bytes, NIL -> None, atoms -> Atom."""
    out = []
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            sub, pos = parse_sexp(data, pos + 1, until_close=True)
            out.append(sub)
        elif c == b")":
            if not until_close:
                raise ParseError(f"unbalanced ')' at {pos}: {data[:200]!r}")
            return out, pos + 1
        elif c == b'"':
            pos += 1
            s = bytearray()
            while True:
                if pos >= n:
                    raise ParseError(f"unterminated quoted string: {data[:200]!r}")
                ch = data[pos]
                if ch == 0x5C:  # backslash
                    s.append(data[pos + 1])
                    pos += 2
                elif ch == 0x22:
                    pos += 1
                    break
                else:
                    s.append(ch)
                    pos += 1
            out.append(bytes(s))
        elif c == b"{" or data[pos:pos + 2] == b"~{":  # literal or literal8 (RFC 3516)
            m = re.compile(rb"~?\{(\d+)\+?\}\r\n").match(data, pos)
            if not m:
                raise ParseError(f"bad literal at {pos}: {data[pos:pos + 40]!r}")
            ln = int(m.group(1))
            start = m.end()
            if start + ln > n:
                raise ParseError("literal runs past the end of the response")
            out.append(data[start:start + ln])
            pos = start + ln
        else:
            start = pos
            depth = 0
            while pos < n:
                ch = data[pos:pos + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                    break
                pos += 1
            # a partial specifier directly after the section: BODY[]<0>
            if pos < n and data[pos:pos + 1] == b"<" and data[pos - 1:pos] == b"]":
                end = data.index(b">", pos)
                pos = end + 1
            tok = data[start:pos].decode("utf-8", "replace")
            out.append(None if tok.upper() == "NIL" else Atom(tok))
    if until_close:
        raise ParseError(f"unbalanced '(': {data[:200]!r}")
    return out, pos


def parse_fetch(resp: bytes):
    """`* n FETCH (k v k v ...)` -> (n, {KEY_UPPER: value}). None if not a FETCH response."""
    m = re.match(rb"\* (\d+) FETCH ", resp, re.I)
    if not m:
        return None
    vals, _ = parse_sexp(resp, m.end())
    if len(vals) != 1 or not isinstance(vals[0], list):
        raise ParseError(f"malformed FETCH response: {resp[:300]!r}")
    items = vals[0]
    if len(items) % 2:
        raise ParseError(f"odd number of FETCH items: {resp[:300]!r}")
    d = {}
    for i in range(0, len(items), 2):
        key = items[i]
        if not isinstance(key, Atom):
            raise ParseError(f"FETCH item name is not an atom: {key!r} in {resp[:300]!r}")
        d[key.upper()] = items[i + 1]
    return int(m.group(1)), d


def as_int(v) -> int:
    return int(v)


def astr(v) -> str:
    """A string/atom/NIL value as str (NIL -> None)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def norm_ws(s) -> str | None:
    """Unfold and collapse whitespace (for comparing header values)."""
    if s is None:
        return None
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    return re.sub(r"\s+", " ", s.replace("\r\n", "")).strip()


# --------------------------------------------------------------------------- raw client


class Resp:
    def __init__(self, tag: str, status: str, text: bytes, untagged: list[bytes]):
        self.tag = tag
        self.status = status
        self.text = text
        self.untagged = untagged
        m = CODE_RE.match(text)
        self.code = m.group(1).decode("utf-8", "replace") if m else None

    @property
    def ok(self):
        return self.status == "OK"

    def __repr__(self):
        u = b"\n".join(x[:300] for x in self.untagged[:20])
        return (f"<{self.tag} {self.status} {self.text[:300]!r}; untagged:\n"
                f"{u.decode('utf-8', 'replace')}>")

    def lines(self, prefix: str) -> list[bytes]:
        """Untagged responses starting with `* PREFIX` (case-insensitive)."""
        p = ("* " + prefix).upper().encode()
        return [u for u in self.untagged if u.upper().startswith(p)]

    def fetches(self) -> list[tuple[int, dict]]:
        out = []
        for u in self.untagged:
            f = parse_fetch(u)
            if f is not None:
                out.append(f)
        return out

    def search(self) -> list[int]:
        lines = self.lines("SEARCH")
        assert len(lines) == 1, f"expected one * SEARCH line: {self!r}"
        return [int(x) for x in lines[0].split()[2:]]

    def exists(self) -> list[int]:
        return [int(u.split()[1]) for u in self.untagged
                if re.match(rb"^\* \d+ EXISTS$", u, re.I)]

    def expunged(self) -> list[int]:
        return [int(u.split()[1]) for u in self.untagged
                if re.match(rb"^\* \d+ EXPUNGE$", u, re.I)]

    def code_value(self, name: str) -> list[bytes]:
        """Values of an untagged `* OK [NAME value]` response code."""
        out = []
        for u in self.untagged:
            m = re.match(rb"^\* OK \[" + name.encode() + rb"(?: ([^\]]*))?\]", u, re.I)
            if m:
                out.append(m.group(1))
        return out


class Continuation(Exception):
    pass


class RawIMAP(LineClient):
    """Minimal IMAP client over a real socket: exact bytes in, exact bytes out."""

    def __init__(self, port, implicit_tls=False, timeout=SOCK_TIMEOUT, greet=True):
        super().__init__(port, timeout=timeout, implicit_tls=implicit_tls)
        self.n = 0
        self.greeting = self.read_response() if greet else None

    # ---- low level
    def read_response(self) -> bytes:
        """One response with literals inlined verbatim (`{n}\\r\\n<n bytes>`), CRLF stripped."""
        out = b""
        while True:
            line = self.readline()
            out += line
            m = re.search(rb"\{(\d+)\}$", line)
            if not m:
                return out
            out += b"\r\n" + self.take(int(m.group(1)))

    def next_tag(self) -> str:
        self.n += 1
        return f"a{self.n:03d}"

    def wait(self, tag: str, allow_continuation=False) -> Resp:
        untagged = []
        t = tag.encode()
        while True:
            r = self.read_response()
            if r.startswith(t + b" "):
                m = TAGGED_RE.match(r)
                if not m:
                    raise AssertionError(f"malformed tagged response {r!r}")
                return Resp(tag, m.group(2).decode(), m.group(3), untagged)
            if r.startswith(b"+"):
                if allow_continuation:
                    raise Continuation(r)
                raise AssertionError(f"unexpected continuation {r!r} while waiting for {tag}")
            untagged.append(r)

    def wait_tags(self, tags) -> tuple[dict[str, Resp], list[bytes]]:
        """Wait for the tagged responses of pipelined commands, in whatever order the server
        completes them (RFC 3501 5.5). Returns ({tag: Resp}, every untagged response)."""
        want = set(tags)
        done: dict[str, Resp] = {}
        untagged: list[bytes] = []
        while want - set(done):
            r = self.read_response()
            m = TAGGED_RE.match(r)
            if m and m.group(1).decode("utf-8", "replace") in want:
                t = m.group(1).decode()
                assert t not in done, f"two tagged responses for {t}: {r!r}"
                done[t] = Resp(t, m.group(2).decode(), m.group(3), [])
            elif r.startswith(b"+"):
                raise AssertionError(f"unexpected continuation {r!r}")
            else:
                untagged.append(r)
        return done, untagged

    def cmd(self, line: str | bytes, tag: str | None = None) -> Resp:
        tag = tag or self.next_tag()
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(tag.encode() + b" " + line + b"\r\n")
        return self.wait(tag)

    def cmd_lit(self, prefix: str | bytes, literal: bytes, suffix: bytes | str = b"") -> Resp:
        """`tag PREFIX{n}` + literal + SUFFIX with a synchronizing literal. If the server
        rejects before the continuation, its tagged response is returned."""
        tag = self.next_tag()
        if isinstance(prefix, str):
            prefix = prefix.encode()
        if isinstance(suffix, str):
            suffix = suffix.encode()
        self.send(tag.encode() + b" " + prefix + b"{%d}\r\n" % len(literal))
        untagged = []
        while True:
            r = self.read_response()
            if r.startswith(b"+"):
                break
            if r.startswith(tag.encode() + b" "):
                m = TAGGED_RE.match(r)
                assert m, r
                return Resp(tag, m.group(2).decode(), m.group(3), untagged)
            untagged.append(r)
        self.send(literal + suffix + b"\r\n")
        resp = self.wait(tag)
        resp.untagged[:0] = untagged
        return resp

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert r.ok, r
        assert not self.buf, f"data after the STARTTLS reply: {self.buf!r}"
        self._wrap_tls()
        return r

    def login(self, user, password) -> Resp:
        r = self.cmd(f"LOGIN {quote(user)} {quote(password)}")
        assert r.ok, r
        return r

    def select(self, mailbox="INBOX") -> Resp:
        r = self.cmd(f"SELECT {mailbox}")
        assert r.ok, r
        return r

    def read_until(self, pred, timeout) -> list[bytes]:
        """Read responses until pred(response) is true; AssertionError after timeout.
        Returns all responses read (the matching one last)."""
        got = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching response within {timeout}s; got {got!r}")
                self.sock.settimeout(left)
                try:
                    r = self.read_response()
                except socket.timeout:
                    raise AssertionError(
                        f"no matching response within {timeout}s; got {got!r}") from None
                got.append(r)
                if pred(r):
                    return got
        finally:
            self.sock.settimeout(self.timeout)


def noop_until(c, pred, timeout=10.0):
    """NOOP until pred(every untagged response so far) is true; returns them all."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while True:
        r = c.cmd("NOOP")
        assert r.ok, r
        seen += r.untagged
        if pred(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; NOOP responses: {seen!r}")
        time.sleep(0.05)


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def caps_of(text: bytes) -> set[str]:
    """Capabilities from `[CAPABILITY a b c]` in a response text, or from `* CAPABILITY a b c`."""
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", text, re.I)
    if m:
        return {c.decode().upper() for c in m.group(1).split()}
    m = re.match(rb"^\* CAPABILITY (.*)$", text, re.I)
    assert m, f"no capability list in {text!r}"
    return {c.decode().upper() for c in m.group(1).split()}


def raw_connect(gw: Gateway, mode: str) -> RawIMAP:
    """mode: 'tls' (implicit, imaps port) or 'starttls' (plain port + STARTTLS)."""
    if mode == "tls":
        return RawIMAP(gw.imaps_port, implicit_tls=True)
    c = RawIMAP(gw.imap_port)
    c.starttls()
    return c


def raw_login(gw: Gateway, mbx: dict, mode="tls", select=False) -> RawIMAP:
    """Logged in as the mailbox; mode as for raw_connect."""
    c = raw_connect(gw, mode)
    assert c.greeting.startswith(b"* OK"), c.greeting
    c.login(mbx["id"], mbx["password"])
    if select:
        c.select()
    return c


def uid_map(c: RawIMAP) -> list[int]:
    """UIDs of the selected mailbox in sequence order."""
    r = c.cmd("FETCH 1:* (UID)")
    assert r.ok, r
    return [as_int(d["UID"]) for _, d in sorted(r.fetches())]


def fetch_bodies(gw: Gateway, mbx: dict) -> dict[int, bytes]:
    """{uid: BODY.PEEK[] bytes} of a mailbox, via a fresh session (nothing changed)."""
    with contextlib.closing(raw_login(gw, mbx)) as c:
        r = c.cmd("EXAMINE INBOX")
        assert r.ok, r
        if not r.exists() or r.exists()[-1] == 0:
            c.cmd("LOGOUT")
            return {}
        r = c.cmd("UID FETCH 1:* (UID BODY.PEEK[])")
        assert r.ok, r
        out = {as_int(d["UID"]): d["BODY[]"] for _, d in r.fetches()}
        c.cmd("LOGOUT")
        return out


def message_count(gw: Gateway, mbx: dict) -> int:
    """Number of messages by IMAP STATUS."""
    with contextlib.closing(raw_login(gw, mbx)) as c:
        r = c.cmd("STATUS INBOX (MESSAGES)")
        assert r.ok, r
        st = r.lines("STATUS")
        assert st, r
        m = re.search(rb"MESSAGES (\d+)", st[0], re.I)
        assert m, st
        c.cmd("LOGOUT")
        return int(m.group(1))


# --------------------------------------------------------------------------- imaplib


def imaplib_connect(gw: Gateway, mode="starttls", timeout=SOCK_TIMEOUT):
    """mode: 'starttls', 'ssl' (imaps port) or 'plain'."""
    if mode == "ssl":
        return imaplib.IMAP4_SSL("127.0.0.1", gw.imaps_port, ssl_context=unverified_ctx(),
                                 timeout=timeout)
    c = imaplib.IMAP4("127.0.0.1", gw.imap_port, timeout=timeout)
    if mode == "starttls":
        typ, data = c.starttls(ssl_context=unverified_ctx())
        assert typ == "OK", data
    return c


def imaplib_login(gw: Gateway, mbx: dict, mode="starttls"):
    c = imaplib_connect(gw, mode)
    typ, data = c.login(mbx["id"], mbx["password"])
    assert typ == "OK", data
    return c


__all__ = [
    "Atom", "RawIMAP", "Resp", "as_int", "astr", "build_message", "caps_of", "fetch_bodies",
    "fill", "igw", "imap_overrides", "imaplib_connect", "imaplib_login", "make_igw",
    "message_count", "norm_ws", "parse_fetch", "parse_sexp", "quote", "raw_connect", "raw_login",
    "self_signed_cert", "served_cert_pem", "strip_received", "uid_map",
]
