"""IMAP server (issue 3): bad input. Each bad command gets a BAD/NO, and the session and the
server stay healthy (the stored messages are unchanged)."""

from __future__ import annotations

import contextlib
import random
import re
import socket
import ssl
import time

import pytest

from jgharness import send_smtp
from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    RawIMAP, fetch_bodies, fill, igw, make_igw, quote, raw_login, uid_map,
)

# untagged responses a server may send at any time (not an answer to the garbage)
UNSOLICITED = re.compile(rb"^\* (\d+ (EXISTS|RECENT|EXPUNGE|FETCH)\b|OK\b)", re.I)
REFUSAL = re.compile(rb"^(\* |\S+ )(BAD|NO)\b", re.I)


def closing(c):
    return contextlib.closing(c)


def noop_after(c: RawIMAP, tag: str):
    """Send `tag NOOP`, return every response up to its tagged OK."""
    c.send(f"{tag} NOOP\r\n")
    got = []
    deadline = time.monotonic() + 15
    while True:
        c.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            r = c.read_response()
        except socket.timeout:
            raise AssertionError(f"no answer to NOOP within 15s; got {got!r}") from None
        finally:
            c.sock.settimeout(c.timeout)
        if r.startswith(tag.encode() + b" "):
            assert r.startswith(tag.encode() + b" OK"), (r, got)
            return got
        got.append(r)


def assert_server_healthy(gw, mbx, bodies):
    """A fresh session logs in and sees exactly the same messages."""
    assert gw.running, "the server process died"
    assert fetch_bodies(gw, mbx) == bodies


def check_garbage(c: RawIMAP, line: bytes, i: int):
    c.send(line + b"\r\n")
    got = noop_after(c, f"z{i}")
    answers = [r for r in got if not UNSOLICITED.match(r)]
    m = re.match(rb"^([A-Za-z0-9.]+) ", line)
    for r in answers:
        assert REFUSAL.match(r), f"{line[:80]!r} was answered {r[:200]!r} (all: {got!r})"
    if line.strip():
        assert answers, f"no BAD/NO for {line[:80]!r}: {got!r}"
    if m and answers:
        tag = m.group(1)
        tagged = [r for r in answers if r.startswith(tag + b" ")]
        assert tagged or all(r.startswith(b"* ") for r in answers), (line, got)


def run_garbage(open_session, lines, per_session=20):
    """check_garbage for each line; a fresh session every per_session lines (the server may
    end a session after many errors: see test_many_errors_end_cleanly). Returns the last
    session, still open."""
    c = None
    for i, line in enumerate(lines):
        if i % per_session == 0:
            if c is not None:
                assert c.cmd("LOGOUT").ok
                c.close()
            c = open_session()
        try:
            check_garbage(c, line, i)
        except (AssertionError, ConnectionError) as e:
            raise AssertionError(f"garbage line {i} {line[:80]!r}: {e}") from e
    return c


GARBAGE_SELECTED = [
    b"",
    b"garbage",
    b"a1",
    b"a1 ",
    b"a1 FOOBAR",
    b"a1 fetch",
    b"a1 FETCH 1 (",
    b"a1 FETCH 1 (FLAGS))",
    b"a1 FETCH x (FLAGS)",
    b"a1 FETCH 1:2:3 (FLAGS)",
    b"a1 FETCH 1 (NOSUCHITEM)",
    b"a1 FETCH 1 (BODY[HEADER.FIELDS ()])",
    b"a1 FETCH 1 (BODY[]<>)",
    b"a1 FETCH 1 (BODY[]<-1.5>)",
    b"a1 FETCH 1 BODY[",
    b"a1 FETCH 1 (BODY[NOSUCHSECTION])",
    b"a1 FETCH 99999999999999999999 (FLAGS)",
    b"a1 UID FETCH 4294967296 (FLAGS)",
    b"a1 UID FETCH 0 (FLAGS)",
    b"a1 FETCH 0:* (FLAGS)",
    b"a1 SELECT",
    b"a1 UID",
    b"a1 UID FOOBAR 1",
    b"a1 STORE 1 +FLAGS",
    b"a1 STORE 1 +FLAGS (\\Seen",
    b"a1 STORE 1 +FLAGS (\xff\xfe)",
    b"a1 SEARCH",
    b"a1 SEARCH OR FROM x",
    b"a1 SEARCH (FROM x",
    b"a1 SEARCH FROM",
    b"a1 SEARCH SINCE 31-Foo-2020",
    b"a1 SEARCH LARGER -5",
    b"a1 SEARCH CHARSET",
    b"* NOOP",
    b"+ NOOP",
    b"a\x00b NOOP",
    b"a1 NO\x00OP",
    b"\xff\xfe\xfd\xfc",
    b"a1 \xff\xfe\xfd",
    b"a1 LOGIN x y",
    b"a1 AUTHENTICATE PLAIN AAAA",
    b"a1 STARTTLS",
    b"a1 DONE",
    b"DONE",
    b'a1 SELECT "unterminated',
    b'a1 SELECT "bad\\q"',
    b"a1 EXAMINE \"\xc3\x28\"",
    b"a1 SELECT \xc3\x28",
    b"a1 STATUS INBOX (FOO)",
    b"a1 STATUS INBOX",
    b"a1 LIST",
    b"a1 LIST \"\"",
    b"a1 ENABLE",
    b"a1 UID EXPUNGE",
    b"a1 UID EXPUNGE x",
    b"a1 COPY",
    b"a1 " + b"X" * 5000,
    b"a1 FETCH 1 (" + b"FLAGS " * 3000 + b")" + b")" * 10,
]


def test_garbage_lines_selected(igw):
    mbx, msgs = fill(igw, 3)
    bodies = fetch_bodies(igw, mbx)
    with closing(run_garbage(lambda: raw_login(igw, mbx, select=True), GARBAGE_SELECTED)) as c:
        # the session still works normally (a refused SELECT/EXAMINE may have deselected)
        c.select()
        assert sorted(uid_map(c)) == sorted(bodies)
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert {int(d["UID"]): d["BODY[]"] for _, d in r.fetches()} == bodies
        c.cmd("LOGOUT")
    with closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("SEARCH DELETED")
        assert r.ok and r.search() == [], "garbage set \\Deleted"
        c.cmd("LOGOUT")
    assert_server_healthy(igw, mbx, bodies)


def test_garbage_lines_before_login(igw):
    mbx, msgs = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    lines = [b"", b"garbage", b"a1 FOOBAR", b"a1 LOGIN", b"a1 LOGIN onlyuser",
             b"a1 LOGIN \xff\xfe \xfd", b'a1 LOGIN "\xc3\x28" "x"', b"a1 AUTHENTICATE",
             b"a1 AUTHENTICATE PLAIN !!!notbase64!!!", b"a1 AUTHENTICATE PLAIN =",
             b"a1 SELECT INBOX", b"a1 FETCH 1 (FLAGS)", b"a1 CLOSE", b"a1 UNSELECT",
             b"a1 IDLE", b"\x16\x03\x01\x02\x00\x01\x00", b"a1 ID (", b"a1 ENABLE IMAP4rev2"]
    with closing(run_garbage(lambda: RawIMAP(igw.imaps_port, implicit_tls=True), lines)) as c:
        c.login(mbx["id"], mbx["password"])
        assert c.select().exists() == [1]
        c.cmd("LOGOUT")
    assert_server_healthy(igw, mbx, bodies)


def test_many_errors_end_cleanly(igw):
    """100 bad commands in one session: either every one is answered and the session goes
    on, or the server ends the session with an untagged BYE (never a silent close)."""
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    with closing(raw_login(igw, mbx, select=True)) as c:
        c.send(b"".join(b"e%d FOOBAR %d\r\n" % (i, i) for i in range(100)) + b"n1 NOOP\r\n")
        got = []
        try:
            got = c.read_until(lambda r: r.startswith(b"n1 ") or r.startswith(b"* BYE"),
                               timeout=15)
        except ConnectionError:
            raise AssertionError(f"closed without BYE after {len(got)} responses") from None
        if got[-1].startswith(b"* BYE"):
            assert c.closed_by_server(5), "BYE but the connection stays open"
            assert len([r for r in got if REFUSAL.match(r)]) >= 10, got
        else:
            assert got[-1].startswith(b"n1 OK"), got[-1]
            assert len([r for r in got if REFUSAL.match(r)]) == 100, got
    assert_server_healthy(igw, mbx, bodies)


def test_commands_in_wrong_state(igw):
    mbx, msgs = fill(igw, 2)
    with closing(raw_login(igw, mbx)) as c:
        # authenticated, nothing selected
        for line in ("FETCH 1 (FLAGS)", "UID FETCH 1:* (FLAGS)", "STORE 1 +FLAGS (\\Deleted)",
                     "UID STORE 1 +FLAGS (\\Deleted)", "SEARCH ALL", "UID SEARCH ALL", "EXPUNGE",
                     "UID EXPUNGE 1", "CLOSE", "UNSELECT", "CHECK", "COPY 1 INBOX"):
            r = c.cmd(line)
            assert r.status in ("BAD", "NO"), (line, r)
        for line in (f"LOGIN {mbx['id']} {quote(mbx['password'])}", "AUTHENTICATE PLAIN",
                     "STARTTLS"):
            r = c.cmd(line)
            assert r.status in ("BAD", "NO"), (line, r)
        assert c.select().exists() == [2]
        c.cmd("LOGOUT")
    assert igw.show(mbx["id"])["messages"] == 2


def test_literal_4294967295(igw):
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        for i, lit in enumerate((b"{4294967295}", b"{99999999999999999999}", b"{18446744073709551615}")):
            c.send(b"L%d LOGIN " % i + lit + b"\r\n")
            r = c.read_response()
            assert not r.startswith(b"+"), f"the server invited a {lit!r} literal: {r!r}"
            assert REFUSAL.match(r), r
            noop_after(c, f"n{i}")
        c.login(mbx["id"], mbx["password"])
        c.select()
        c.send(b"S1 SEARCH TEXT {4294967295}\r\n")
        r = c.read_response()
        assert not r.startswith(b"+") and REFUSAL.match(r), r
        noop_after(c, "n9")
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert {int(d["UID"]): d["BODY[]"] for _, d in r.fetches()} == bodies
        c.cmd("LOGOUT")
    assert_server_healthy(igw, mbx, bodies)


def test_non_synchronizing_huge_literal(igw):
    """{4294967295+}: the client has already started sending; the server must refuse with
    BAD (and may close the connection), without waiting for 4 GB or crashing."""
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    with closing(raw_login(igw, mbx, select=True)) as c:
        c.send(b"S1 SEARCH TEXT {4294967295+}\r\nsome bytes\r\n")
        try:
            got = c.read_until(lambda r: REFUSAL.match(r) or r.startswith(b"* BYE"), timeout=10)
        except ConnectionError:
            got = []  # closed at once: acceptable
        assert all(not r.startswith(b"+") for r in got), got
    assert_server_healthy(igw, mbx, bodies)


def test_unterminated_literal(make_igw):
    gw = make_igw(imap={"idle_timeout_secs": 3})
    mbx, _ = fill(gw, 1)
    bodies = fetch_bodies(gw, mbx)
    # 1. the client disappears in the middle of a literal
    with closing(RawIMAP(gw.imaps_port, implicit_tls=True)) as c:
        c.send(b"a1 LOGIN {100}\r\n")
        assert c.read_response().startswith(b"+")
        c.send(b"only ten b")
    assert_server_healthy(gw, mbx, bodies)
    # 2. the client stalls in the middle of a literal: other sessions are not blocked,
    #    and the stalled one is closed by the idle timeout
    with closing(raw_login(gw, mbx, select=True)) as c:
        c.send(b"a1 SEARCH TEXT {100}\r\n")
        assert c.read_response().startswith(b"+")
        c.send(b"short")
        t0 = time.monotonic()
        assert_server_healthy(gw, mbx, bodies)
        assert c.closed_by_server(15), "a stalled literal kept the session open"
        assert time.monotonic() - t0 < 15
    # 3. a literal over max_command_size is refused before the continuation
    with closing(raw_login(gw, mbx, select=True)) as c:
        c.send(b"a2 SEARCH TEXT {1000000}\r\n")
        r = c.read_response()
        assert not r.startswith(b"+") and REFUSAL.match(r), r
        noop_after(c, "n1")
    assert_server_healthy(gw, mbx, bodies)


def test_huge_sequence_sets(igw):
    mbx, msgs = fill(igw, 3)
    bodies = fetch_bodies(igw, mbx)
    uids = sorted(bodies)
    with closing(raw_login(igw, mbx, select=True)) as c:
        # 100,000 items (~590 KB) exceed max_command_size (64 KiB): BAD, the session goes on
        big = ",".join(str(i) for i in range(1, 100001))
        t0 = time.monotonic()
        c.send(f"h1 UID FETCH {big} (FLAGS)\r\n")
        got = c.read_until(lambda r: r.startswith(b"h1 ") or r.startswith(b"* BAD")
                           or r.startswith(b"* BYE"), timeout=20)
        assert REFUSAL.match(got[-1]), got[-1][:200]
        assert time.monotonic() - t0 < 20
        noop_after(c, "n1")
        # 10,000 items (~49 KB) fit: only existing UIDs come back
        mid = ",".join(str(i) for i in range(1, 10001))
        r = c.cmd(f"UID FETCH {mid} (UID)")
        assert r.ok, r
        assert sorted(int(d["UID"]) for _, d in r.fetches()) == [u for u in uids if u <= 10000]
        # ranges up to the largest UID, repeated and overlapping
        r = c.cmd("UID FETCH 1:4294967295 (UID)")
        assert r.ok and sorted(int(d["UID"]) for _, d in r.fetches()) == uids, r
        rep = ",".join(["1:*"] * 5000 + ["4294967295:1"] * 2000)
        t0 = time.monotonic()
        r = c.cmd(f"UID FETCH {rep} (UID)")
        assert r.ok and sorted({int(d["UID"]) for _, d in r.fetches()}) == uids, r
        assert time.monotonic() - t0 < 10
        r = c.cmd("UID SEARCH UID 1:4294967295")
        assert r.ok and r.search() == uids, r
        r = c.cmd("UID STORE 1:4294967295 +FLAGS.SILENT (\\Flagged)")
        assert r.ok, r
        r = c.cmd("SEARCH FLAGGED")
        assert r.search() == [1, 2, 3], r
        r = c.cmd(f"SEARCH {mid}")  # sequence numbers beyond EXISTS
        assert r.status in ("OK", "BAD", "NO"), r
        noop_after(c, "n2")
        c.cmd("LOGOUT")
    assert_server_healthy(igw, mbx, bodies)


def test_overlong_lines(igw):
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    with closing(raw_login(igw, mbx, select=True)) as c:
        for i, n in enumerate((1_000_000, 5_000_000)):
            tag = b"o%d" % i
            c.send(tag + b" SEARCH TEXT " + b"a" * n + b"\r\n")
            got = c.read_until(lambda r: r.startswith(tag + b" ") or REFUSAL.match(r)
                               or r.startswith(b"* BYE"), timeout=20)
            assert REFUSAL.match(got[-1]), f"a {n}-octet command was answered {got!r}"
            noop_after(c, f"n{i}")
        # a line of only spaces, and ten empty lines (below the per-session error limit)
        c.send(b" " * 1000 + b"\r\n")
        noop_after(c, "n7")
        c.send(b"\r\n" * 10)
        noop_after(c, "n8")
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert {int(d["UID"]): d["BODY[]"] for _, d in r.fetches()} == bodies
    assert_server_healthy(igw, mbx, bodies)


def test_command_over_max_command_size(make_igw):
    """[imap] max_command_size is the longest command accepted: one octet more is refused
    (BAD), and the session goes on."""
    gw = make_igw(imap={"max_command_size": 65536})
    mbx, _ = fill(gw, 1)
    with closing(raw_login(gw, mbx, select=True)) as c:
        prefix = b"o1 SEARCH TEXT "
        ok_line = prefix + b"a" * (60_000)
        r = c.cmd(ok_line[3:].decode(), tag="o0")
        assert r.ok, r
        c.send(prefix + b"a" * (65537 - len(prefix)) + b"\r\n")
        got = c.read_until(lambda r: r.startswith(b"o1 ") or REFUSAL.match(r)
                           or r.startswith(b"* BYE"), timeout=20)
        assert REFUSAL.match(got[-1]), f"a 65,539-octet command was answered {got!r}"
        noop_after(c, "n1")


def test_invalid_utf8(igw):
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    wrong = []
    with closing(raw_login(igw, mbx, select=True)) as c:
        for what, r in (
            ("SEARCH CHARSET UTF-8 SUBJECT <ff fe c3>",
             c.cmd_lit("SEARCH CHARSET UTF-8 SUBJECT ", b"\xff\xfe\xc3")),
            ("SEARCH CHARSET UTF-8 BODY <ok c3 28>",
             c.cmd_lit("SEARCH CHARSET UTF-8 BODY ", b"ok\xc3\x28")),
            ('SELECT "<c3 28>"', c.cmd(b'SELECT "\xc3\x28"')),
        ):
            if r.status not in ("BAD", "NO"):
                wrong.append(f"{what} -> {r.status} {r.text[:100]!r} {r.untagged[:3]!r}")
        r = c.cmd(b'ID ("name" "\xff\xfe")')
        assert r.status in ("OK", "BAD", "NO"), r
        assert c.select().exists() == [1]  # a refused SELECT deselects (RFC 3501 6.3.1)
        c.cmd("LOGOUT")
    with closing(RawIMAP(igw.imaps_port, implicit_tls=True)) as c:
        r = c.cmd_lit(f"LOGIN {mbx['id']} ", b"\xff\xfe\xfd\xfc")
        if r.status not in ("BAD", "NO"):
            wrong.append(f"LOGIN with an invalid UTF-8 password -> {r!r}")
        assert c.cmd("NOOP").ok
    assert_server_healthy(igw, mbx, bodies)
    assert not wrong, "invalid UTF-8 accepted:\n" + "\n".join(wrong)


def test_pipelined_good_and_bad_commands(igw):
    mbx, msgs = fill(igw, 2)
    with closing(raw_login(igw, mbx)) as c:
        c.send(b"p1 NOOP\r\np2 FOO\r\np3 SELECT INBOX\r\np4 FETCH\r\np5 FETCH 2 (UID)\r\n"
               b"p6 FETCH 9 (UID)\r\np7 STORE 1 +FLAGS (\\Flagged)\r\np8 SEARCH FLAGGED\r\n"
               b"p9 NOOP\r\n")
        want = {"p1": "OK", "p2": "BAD", "p3": "OK", "p4": "BAD", "p5": "OK", "p6": ("BAD", "NO"),
                "p7": "OK", "p8": "OK", "p9": "OK"}
        res, untagged = c.wait_tags(list(want))
        for tag, st in want.items():
            assert res[tag].status in (st if isinstance(st, tuple) else (st,)), res[tag]
        assert b"* SEARCH 1" in untagged, untagged
        c.cmd("LOGOUT")


def test_idle_misuse(igw):
    mbx, _ = fill(igw, 1)
    with closing(raw_login(igw, mbx, select=True)) as c:
        # something other than DONE during IDLE: a BAD (for the IDLE or for the line), and
        # after DONE the session is back to normal
        c.send(b"i1 IDLE\r\n")
        assert c.read_response().startswith(b"+")
        c.send(b"i2 NOOP\r\n")
        got = c.read_until(lambda r: REFUSAL.match(r), timeout=10)
        if not any(r.startswith(b"i1 ") for r in got):
            c.send(b"DONE\r\n")  # still idling (or the DONE is answered as garbage)
        got += noop_after(c, "n1")
        assert any(r.startswith(b"i1 ") for r in got), f"IDLE never completed: {got!r}"
        # IDLE twice in a row, DONE in lowercase
        c.send(b"i3 IDLE\r\n")
        assert c.read_response().startswith(b"+")
        c.send(b"done\r\n")
        assert c.wait("i3").ok
        noop_after(c, "n2")
        c.cmd("LOGOUT")


def test_random_token_fuzz(igw):
    """Bounded, deterministic fuzzing with IMAP-looking tokens: every line gets an answer
    and the session never dies."""
    mbx, _ = fill(igw, 2)
    bodies = fetch_bodies(igw, mbx)
    rnd = random.Random(20261116)
    words = ["FETCH", "UID", "STORE", "SEARCH", "SELECT", "EXAMINE", "STATUS", "LIST", "LSUB",
             "NOOP", "CHECK", "ID", "ENABLE", "NAMESPACE", "CAPABILITY", "UNSELECT", "COPY",
             "MOVE", "CREATE", "BODY[", "BODY.PEEK[", "]", "<0.10>", "HEADER.FIELDS", "(", ")",
             "(", ")", "1", "*", "1:*", "2:1", "0", "4294967295", "-1", "INBOX", '""', '"x"',
             "NIL", "+FLAGS", "-FLAGS.SILENT", "\\Seen", "\\Flagged", "ENVELOPE", "RFC822",
             "BODYSTRUCTURE", "BINARY.PEEK[1]", "OR", "NOT", "FROM", "SUBJECT", "TEXT",
             "HEADER", "SINCE", "1-Jan-2020", "CHARSET", "UTF-8", "\\", "%", "\x7f", "\xe9",
             "[", "<", ">", "~", "RETURN", "(SPECIAL-USE)", "MESSAGES", "UIDNEXT"]
    c = raw_login(igw, mbx, select=True)
    try:
        for i in range(300):
            if i and i % 20 == 0:  # stay below the server's per-session error limit
                c.cmd("LOGOUT")
                c.close()
                c = raw_login(igw, mbx, select=True)
            n = rnd.randint(0, 8)
            line = " ".join(rnd.choice(words) for _ in range(n))
            c.send(f"f{i} {line}\r\n".encode("utf-8"))
            got = noop_after(c, f"n{i}")
            # the fuzz line itself was answered (tagged, or untagged BAD)
            assert any(r.startswith(f"f{i} ".encode()) or REFUSAL.match(r) for r in got), \
                (line, got)
            if re.search(r"(CLOSE|UNSELECT|EXAMINE|SELECT)", line):
                assert c.cmd("SELECT INBOX").ok
        # random binary lines
        for i in range(100):
            if i % 20 == 0:
                c.cmd("LOGOUT")
                c.close()
                c = raw_login(igw, mbx, select=True)
            junk = bytes(rnd.choice([b for b in range(256) if b not in (10, 13)])
                         for _ in range(rnd.randint(1, 200)))
            c.send(junk + b"\r\n")
            noop_after(c, f"b{i}")
        c.cmd("LOGOUT")
    finally:
        c.close()
    assert_server_healthy(igw, mbx, bodies)


def test_garbage_on_many_connections_in_parallel(igw):
    """20 connections send garbage at once; a normal client is served meanwhile."""
    mbx, _ = fill(igw, 1)
    bodies = fetch_bodies(igw, mbx)
    conns = []
    try:
        for i in range(20):
            c = RawIMAP(igw.imaps_port if i % 2 else igw.imap_port, implicit_tls=bool(i % 2))
            c.send(b"x1 LOGIN {50}\r\n" if i % 3 == 0 else b"\xff" * 1000 + b"\r\n")
            conns.append(c)
        t0 = time.monotonic()
        assert_server_healthy(igw, mbx, bodies)
        assert time.monotonic() - t0 < 10
        # a TLS handshake that never finishes does not block the listener either
        s = socket.create_connection(("127.0.0.1", igw.imaps_port), timeout=10)
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        assert_server_healthy(igw, mbx, bodies)
        s.close()
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("size", [1000, 200_000])
def test_literal_content_is_never_executed(igw, size):
    """The bytes of a refused literal (APPEND is not supported; 200 KB is over the limit)
    must never be parsed as commands: a message that contains IMAP commands would otherwise
    delete the mailbox."""
    mbx, _ = fill(igw, 3)
    bodies = fetch_bodies(igw, mbx)
    evil = b"x1 STORE 1:* +FLAGS.SILENT (\\Deleted)\r\nx2 EXPUNGE\r\nx3 LOGOUT\r\n"
    literal = (evil * (size // len(evil) + 1))[:size]
    with closing(raw_login(igw, mbx, select=True)) as c:
        got = []
        try:
            c.send(b"a1 APPEND INBOX {%d+}\r\n" % len(literal) + literal + b"\r\n")
            c.send(b"a2 SEARCH TEXT {%d+}\r\n" % len(literal) + literal + b"\r\n")
            got = c.read_until(lambda r: r.startswith(b"a2 ") or r.startswith(b"* BYE"),
                               timeout=20)
        except (ConnectionError, OSError, ssl.SSLError):
            # the server refused the oversized literal and closed the connection (RFC 7888
            # allows that); whatever it answered before closing is in c.buf
            got = [ln for ln in c.buf.split(b"\r\n") if ln]
        executed = [r for r in got if re.match(rb"^x\d ", r)]
        assert not executed, f"literal content ran as commands: {executed[:5]!r}"
        assert not any(re.match(rb"^\* \d+ EXPUNGE", r) for r in got), got
    assert_server_healthy(igw, mbx, bodies)


def test_hostile_address_headers_render_envelopes_and_sort(igw):
    """Header fields that once sent the address parser into an endless loop (a stray `)`,
    control bytes, unbalanced groups and quotes): ENVELOPE, SORT, THREAD and SEARCH answer,
    the session and the server stay healthy."""
    mbx = igw.create_mailbox()
    hostile = [
        b"CC\r:\x08:C):\x0c\xda\n\x0c:):\x0c\xda\x03):\x0c\xda",
        b"To: ) a@b.example\r\nFrom: ((( \"unclosed <x@y\r\nCc: g: ;;; , ) ) (",
        b"From: \x00\x01)\x7f@@@::<<>>\r\nReply-To: grp:a@b,(c;\r\nTo: \"a)\" <)@)>",
    ]
    for i, head in enumerate(hostile):
        msg = head + f"\r\nSubject: hostile {i}\r\n\r\nbody\r\n".encode()
        send_smtp(igw, mbx["address"], msg)
    with closing(raw_login(igw, mbx, select=True)) as c:
        for cmd in ("FETCH 1:* (ENVELOPE)", "SORT (FROM CC TO SUBJECT) UTF-8 ALL",
                    "THREAD REFERENCES UTF-8 ALL", "SEARCH FROM a CC b TO c",
                    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (CC TO FROM)])"):
            r = c.cmd(cmd)
            assert r.ok, (cmd, r)
        r = c.cmd("FETCH 1:* (ENVELOPE)")
        assert len([u for u in r.untagged if b"ENVELOPE" in u]) == len(hostile), r
        assert c.cmd("NOOP").ok
