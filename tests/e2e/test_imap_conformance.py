"""IMAP RFC conformance, end to end over real sockets (raw line client, live gateway):

- RFC 3501 §6.4.5 part numbering of message/rfc822 (top level, doubly encapsulated, inside
  multipart/mixed, holding multipart/digest; a journal report's original byte for byte);
- RFC 3516 BINARY (quoted-printable and base64 decoding, BINARY.SIZE, partial windows, literal8);
- RFC 3501 §7.4.2 ENVELOPE address lists (groups, comment names, source routes, fall-backs);
- keywords and flags (STORE/FETCH/SEARCH, FLAGS and PERMANENTFLAGS announcements, persistence,
  two sessions, the keyword limit);
- RFC 3501 §2.3.2 \\Recent (first session only, EXAMINE, STATUS, SEARCH RECENT/NEW/OLD, live);
- RFC 7162 CONDSTORE (MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE, SEARCH MODSEQ) and QRESYNC
  (SELECT ... (QRESYNC ...), VANISHED, HIGHESTMODSEQ after EXPUNGE, CLOSED);
- the archive's per-user flags (a user's INBOX is read-write for flags only).

Every test starts its own gateway; bodies are compared as MIME parts (the stored message has the
gateway's Received: field in front)."""

from __future__ import annotations

import base64
import contextlib
import re
import time

import pytest

from archiveharness import (  # noqa: F401  (archive_gw is a fixture)
    add_users, archive_gw, folder_counts, journal_report, make_original, raw_user, send_report,
    wait_archived,
)
from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    as_int, build_message, caps_of, fill, igw, make_igw, noop_until, quote, raw_login, uid_map,
)
from jgharness import send_smtp

SYSTEM_FLAGS = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"}
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
AUD = "auditor@archive.example"


# =========================================================================== helpers


def closing(c):
    return contextlib.closing(c)


def deliver(gw, mbx, raw: bytes) -> bytes:
    assert send_smtp(gw, mbx["address"], raw) == {}
    return raw


def session(gw, mbx, select=False):
    return closing(raw_login(gw, mbx, select=select))


def flag_name(f) -> str:
    return "NIL" if f is None else str(f)


def fl(d, recent=False) -> set[str]:
    """The FLAGS of a parsed FETCH item dict as a set (without \\Recent unless recent=True)."""
    out = {flag_name(f) for f in d["FLAGS"]}
    if not recent:
        out = {f for f in out if f.upper() != "\\RECENT"}
    return out


def lower(flags) -> set[str]:
    return {f.lower() for f in flags}


def has_recent(d) -> bool:
    return any(flag_name(f).upper() == "\\RECENT" for f in d["FLAGS"])


def by_seq(r) -> dict[int, dict]:
    """{sequence number: items} of every FETCH response in r (items of one number merged)."""
    out: dict[int, dict] = {}
    for n, d in r.fetches():
        out.setdefault(n, {}).update(d)
    return out


def item(d: dict, name: str):
    """A FETCH item by name; for HEADER.FIELDS the server may spell the field list its own way."""
    name = name.upper()
    if name in d:
        return d[name]
    base = name.split(" ", 1)[0]
    cands = [k for k in d if k.split(" ", 1)[0] == base]
    assert len(cands) == 1, f"no {name} among the FETCH items {list(d)}"
    return d[cands[0]]


def modseq(d) -> int:
    v = d["MODSEQ"]
    assert isinstance(v, list) and len(v) == 1, f"MODSEQ is not `(n)`: {v!r}"
    return int(v[0])


def recent_counts(untagged) -> list[int]:
    return [int(m.group(1)) for u in untagged
            if (m := re.match(rb"^\* (\d+) RECENT$", u, re.I))]


def exists_counts(untagged) -> list[int]:
    return [int(m.group(1)) for u in untagged
            if (m := re.match(rb"^\* (\d+) EXISTS$", u, re.I))]


def _flag_list(text: bytes) -> list[str]:
    return [t.decode() for t in text.split()]


def flags_lines(untagged) -> list[list[str]]:
    """Every untagged `* FLAGS (...)` as a list of flag names."""
    return [_flag_list(m.group(1)) for u in untagged
            if (m := re.match(rb"^\* FLAGS \(([^)]*)\)", u, re.I))]


def permanent_flags(untagged) -> list[list[str]]:
    """Every untagged `* OK [PERMANENTFLAGS (...)]` as a list of flag names."""
    return [_flag_list(m.group(1)) for u in untagged
            if (m := re.match(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", u, re.I))]


def highest_modseq(r) -> int:
    v = r.code_value("HIGHESTMODSEQ")
    assert len(v) == 1, f"expected one `* OK [HIGHESTMODSEQ n]`: {r!r}"
    return int(v[0])


def uidvalidity(r) -> int:
    v = r.code_value("UIDVALIDITY")
    assert len(v) == 1, r
    return int(v[0])


def status_of(r) -> dict[str, int]:
    lines = r.lines("STATUS")
    assert len(lines) == 1, f"expected one * STATUS line: {r!r}"
    m = re.search(rb"\(([^)]*)\)\s*$", lines[0])
    assert m, lines
    toks = m.group(1).split()
    return {toks[i].decode().upper(): int(toks[i + 1]) for i in range(0, len(toks), 2)}


def search_result(r) -> tuple[list[int], int | None]:
    """`* SEARCH 2 5 (MODSEQ 17)` -> ([2, 5], 17); `* SEARCH` -> ([], None)."""
    lines = r.lines("SEARCH")
    assert len(lines) == 1, f"expected one * SEARCH line: {r!r}"
    m = re.match(rb"^\* SEARCH((?: \d+)*)(?: \(MODSEQ (\d+)\))?$", lines[0], re.I)
    assert m, f"malformed SEARCH response {lines[0]!r}"
    return [int(x) for x in m.group(1).split()], (int(m.group(2)) if m.group(2) else None)


def search(c, criteria: str) -> list[int]:
    r = c.cmd(f"SEARCH {criteria}")
    assert r.ok, f"SEARCH {criteria}: {r!r}"
    return search_result(r)[0]


def uid_set(text: bytes | str) -> set[int]:
    if isinstance(text, bytes):
        text = text.decode()
    out = set()
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.update(range(min(a, b), max(a, b) + 1))
        else:
            out.add(int(part))
    return out


def vanished(untagged, earlier: bool) -> list[set[int]]:
    """The UID sets of `* VANISHED (EARLIER) set` (earlier=True) or `* VANISHED set`."""
    pat = rb"^\* VANISHED \(EARLIER\) ([0-9:,]+)$" if earlier else rb"^\* VANISHED ([0-9:,]+)$"
    return [uid_set(m.group(1)) for u in untagged if (m := re.match(pat, u, re.I))]


def assert_vanished_first(untagged):
    """RFC 7162 §3.2.6: VANISHED (EARLIER) comes before any FETCH response."""
    kinds = [("V" if re.match(rb"^\* VANISHED ", u, re.I) else "F")
             for u in untagged if re.match(rb"^\* (VANISHED |\d+ FETCH )", u, re.I)]
    assert "".join(kinds) == "".join(sorted(kinds, key=lambda k: k != "V")), \
        f"a FETCH before VANISHED (EARLIER): {untagged!r}"


def mime_message(headers: list[str], body: bytes) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def outer_headers(subject: str, content_type: str, extra=()) -> list[str]:
    return ["From: outer@example.org", "To: journal@gw.test", f"Subject: {subject}",
            "Date: Mon, 16 Nov 2026 10:00:00 +0000", f"Message-ID: <{subject}@example.org>",
            "MIME-Version: 1.0", f"Content-Type: {content_type}", *extra]


class Sections:
    """Fetches BODY.PEEK[section] of one message and collects every mismatch, so a failing test
    names all wrong sections (with the exact exchange) at once."""

    def __init__(self, c, seq=1):
        self.c, self.seq, self.bad = c, seq, []

    def get(self, sec: str, kind="BODY"):
        cmd = f"FETCH {self.seq} ({kind}.PEEK[{sec}])"
        r = self.c.cmd(cmd)
        if not r.ok:
            self.bad.append(f"{cmd} -> {r.status} {r.text!r}")
            return None
        fs = by_seq(r)
        if self.seq not in fs:
            self.bad.append(f"{cmd} -> no FETCH response: {r!r}")
            return None
        try:
            return item(fs[self.seq], f"{kind}[{sec}]")
        except AssertionError as e:
            self.bad.append(f"{cmd} -> {e}")
            return None

    def expect(self, sec: str, want: bytes, kind="BODY"):
        got = self.get(sec, kind)
        if got is not None and got != want:
            self.bad.append(f"FETCH {self.seq} ({kind}.PEEK[{sec}]) -> {got!r}\n"
                            f"    expected {want!r}")

    def check(self):
        assert not self.bad, "wrong sections:\n  " + "\n  ".join(self.bad)


# =========================================================================== 1. part numbering
# RFC 3501 §6.4.5: a part of type MESSAGE/RFC822 is numbered like a message: N is the whole
# encapsulated message, N.HEADER / N.TEXT its header / body, N.1.. the parts of its body.

INNER_HEAD = (b"From: Inner Sender <inner@example.org>\r\n"
              b"To: bob@example.org\r\n"
              b"Subject: inner subject\r\n"
              b"Date: Tue, 12 Mar 2024 09:30:00 +0000\r\n"
              b"Message-ID: <inner-1@example.org>\r\n"
              b"MIME-Version: 1.0\r\n"
              b"Content-Type: text/plain; charset=us-ascii\r\n"
              b"\r\n")
INNER_BODY = b"Inner body line one.\r\nInner body line two.\r\n"
INNER = INNER_HEAD + INNER_BODY


def test_message_rfc822_top_level_parts(igw):
    mbx = igw.create_mailbox()
    deliver(igw, mbx, mime_message(outer_headers("top-rfc822", "message/rfc822"), INNER))
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("TEXT", INNER)
        s.expect("1", INNER)
        s.expect("1.HEADER", INNER_HEAD)
        s.expect("1.TEXT", INNER_BODY)
        s.expect("1.1", INNER_BODY)
        s.expect("1.HEADER.FIELDS (FROM SUBJECT)",
                 b"From: Inner Sender <inner@example.org>\r\nSubject: inner subject\r\n\r\n")
        s.expect("1.HEADER.FIELDS (subject from)",
                 b"From: Inner Sender <inner@example.org>\r\nSubject: inner subject\r\n\r\n")
        s.expect("1.HEADER.FIELDS.NOT (FROM SUBJECT)",
                 b"To: bob@example.org\r\n"
                 b"Date: Tue, 12 Mar 2024 09:30:00 +0000\r\n"
                 b"Message-ID: <inner-1@example.org>\r\n"
                 b"MIME-Version: 1.0\r\n"
                 b"Content-Type: text/plain; charset=us-ascii\r\n"
                 b"\r\n")
        s.check()
        # BODYSTRUCTURE agrees: MESSAGE/RFC822 with the encapsulated TEXT/PLAIN body
        r = c.cmd("FETCH 1 (BODYSTRUCTURE)")
        bs = by_seq(r)[1]["BODYSTRUCTURE"]
        assert [bs[0].upper(), bs[1].upper()] == [b"MESSAGE", b"RFC822"], r
        assert [bs[8][0].upper(), bs[8][1].upper()] == [b"TEXT", b"PLAIN"], r
        # peeking set nothing
        assert fl(by_seq(c.cmd("FETCH 1 (FLAGS)"))[1]) == set()
        c.cmd("LOGOUT")


def test_message_rfc822_doubly_encapsulated(igw):
    middle_head = (b"From: middle@example.org\r\nSubject: middle\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: message/rfc822\r\n\r\n")
    middle = middle_head + INNER
    mbx = igw.create_mailbox()
    deliver(igw, mbx, mime_message(outer_headers("double-rfc822", "message/rfc822"), middle))
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("1", middle)
        s.expect("1.HEADER", middle_head)
        s.expect("1.TEXT", INNER)
        s.expect("1.1", INNER)
        s.expect("1.1.HEADER", INNER_HEAD)
        s.expect("1.1.TEXT", INNER_BODY)
        s.expect("1.1.1", INNER_BODY)
        s.expect("1.1.HEADER.FIELDS (SUBJECT)", b"Subject: inner subject\r\n\r\n")
        s.check()
        c.cmd("LOGOUT")


ALT_HEAD = (b"From: Carol <carol@example.org>\r\n"
            b"To: dave@example.org\r\n"
            b"Subject: alternative inside\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=\"alt-b\"\r\n"
            b"\r\n")
ALT_PLAIN_MIME = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
ALT_TEXT = (b"--alt-b\r\n" + ALT_PLAIN_MIME + b"Plain alternative.\r\n"
            b"--alt-b\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n"
            b"<p>HTML alternative.</p>\r\n"
            b"--alt-b--\r\n")
ALT_MSG = ALT_HEAD + ALT_TEXT
FWD_MIME = b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n"


def test_multipart_with_message_rfc822_holding_alternative(igw):
    body = (b"This is a multi-part message in MIME format.\r\n"
            b"--outer-b\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            b"Cover note.\r\n"
            b"--outer-b\r\n" + FWD_MIME + ALT_MSG +
            b"\r\n--outer-b--\r\n")
    mbx = igw.create_mailbox()
    deliver(igw, mbx, mime_message(
        outer_headers("mixed-fwd", 'multipart/mixed; boundary="outer-b"'), body))
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("1", b"Cover note.")
        s.expect("2", ALT_MSG)
        s.expect("2.MIME", FWD_MIME)
        s.expect("2.HEADER", ALT_HEAD)
        s.expect("2.TEXT", ALT_TEXT)
        s.expect("2.1", b"Plain alternative.")
        s.expect("2.1.MIME", ALT_PLAIN_MIME)
        s.expect("2.2", b"<p>HTML alternative.</p>")
        s.expect("2.2.MIME", b"Content-Type: text/html; charset=utf-8\r\n\r\n")
        s.expect("2.HEADER.FIELDS (SUBJECT)", b"Subject: alternative inside\r\n\r\n")
        s.check()
        c.cmd("LOGOUT")


def test_message_rfc822_holding_digest(igw):
    entry1 = b"From: d1@example.org\r\nSubject: digest one\r\n\r\nDigest one body.\r\n"
    entry2 = b"From: d2@example.org\r\nSubject: digest two\r\n\r\nDigest two body.\r\n"
    digest_head = (b"From: list@example.org\r\nSubject: the digest\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: multipart/digest; boundary=\"dig\"\r\n\r\n")
    digest = (digest_head +
              b"--dig\r\n"
              b"\r\n" + entry1 +  # no MIME header: message/rfc822 by default in a digest
              b"\r\n--dig\r\n"
              b"Content-Type: message/rfc822\r\n\r\n" + entry2 +
              b"\r\n--dig--\r\n")
    mbx = igw.create_mailbox()
    deliver(igw, mbx, mime_message(outer_headers("digest-rfc822", "message/rfc822"), digest))
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("1", digest)
        s.expect("1.HEADER", digest_head)
        s.expect("1.1", entry1)
        s.expect("1.1.HEADER", b"From: d1@example.org\r\nSubject: digest one\r\n\r\n")
        s.expect("1.1.TEXT", b"Digest one body.\r\n")
        s.expect("1.2", entry2)
        s.expect("1.2.MIME", b"Content-Type: message/rfc822\r\n\r\n")
        s.expect("1.2.TEXT", b"Digest two body.\r\n")
        s.check()
        r = c.cmd("FETCH 1 (BODYSTRUCTURE)")
        bs = by_seq(r)[1]["BODYSTRUCTURE"]
        inner = bs[8]  # the encapsulated multipart/digest
        assert isinstance(inner[0], list) and isinstance(inner[1], list), r
        assert inner[2].upper() == b"DIGEST", r
        for part in inner[:2]:  # both entries are MESSAGE/RFC822 (the first by default)
            assert [part[0].upper(), part[1].upper()] == [b"MESSAGE", b"RFC822"], r
        c.cmd("LOGOUT")


def test_journal_report_original_is_part_2_byte_for_byte(igw):
    original = make_original(subject="Quarterly numbers (journal)", sender=ALICE, to=BOB,
                             body="Numbers attached.\r\n\r\n-- \r\nAlice\r\n")
    report = journal_report(ALICE, [("To", BOB)], original=original)
    mbx = igw.create_mailbox()
    deliver(igw, mbx, report)
    head, _, body = original.partition(b"\r\n\r\n")
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("2", original)
        s.expect("2.HEADER", head + b"\r\n\r\n")
        s.expect("2.TEXT", body)
        s.expect("2.MIME", b"Content-Type: message/rfc822\r\n\r\n")
        got1 = s.get("1")
        s.check()
        assert got1.startswith(b"Sender: " + ALICE.encode() + b"\r\n"), got1
        assert fl(by_seq(c.cmd("FETCH 1 (FLAGS)"))[1]) == set()  # BODY.PEEK sets no \Seen
        c.cmd("LOGOUT")


# =========================================================================== 2. BINARY (RFC 3516)

QP_ENCODED = (b"Hello W=C3=B6rld   \r\n"      # trailing spaces go
              b"soft =\r\n"                   # soft line break joins
              b"break\t\r\n"                  # trailing tab goes
              b"=3D sign and tab=09end\r\n"
              b"last line\r\n")
QP_DECODED = (b"Hello W\xc3\xb6rld\r\n"
              b"soft break\r\n"
              b"= sign and tab\tend\r\n"
              b"last line\r\n")


def test_binary_quoted_printable(igw):
    mbx = igw.create_mailbox()
    deliver(igw, mbx, build_message(subject="qp", body=QP_ENCODED,
                                    cte="quoted-printable"))
    n = len(QP_DECODED)
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("1", QP_ENCODED)                 # BODY is not decoded
        s.expect("1", QP_DECODED, kind="BINARY")  # BINARY is
        s.check()
        r = c.cmd("FETCH 1 (BINARY.SIZE[1])")
        assert r.ok, r
        assert as_int(by_seq(r)[1]["BINARY.SIZE[1]"]) == n, (n, r)
        for off, ln in ((6, 10), (0, 5), (n - 3, 100)):
            r = c.cmd(f"FETCH 1 (BINARY.PEEK[1]<{off}.{ln}>)")
            assert r.ok, r
            d = by_seq(r)[1]
            assert f"BINARY[1]<{off}>" in d, f"response label is not BINARY[1]<{off}>: {r!r}"
            assert d[f"BINARY[1]<{off}>"] == QP_DECODED[off:off + ln], (off, ln, r)
        assert fl(by_seq(c.cmd("FETCH 1 (FLAGS)"))[1]) == set(), "BINARY.PEEK set a flag"
        # BINARY without .PEEK sets \Seen, as BODY does
        r = c.cmd("FETCH 1 (BINARY[1])")
        assert r.ok and by_seq(r)[1]["BINARY[1]"] == QP_DECODED, r
        assert "\\Seen" in fl(by_seq(c.cmd("FETCH 1 (FLAGS)"))[1])
        c.cmd("LOGOUT")


def test_binary_base64_and_literal8(igw):
    text = b"Base64 text part.\r\nLine two.\r\n"
    blob = bytes(range(256))
    b64 = lambda data: base64.encodebytes(data).replace(b"\n", b"\r\n")  # noqa: E731
    body = (b"--bin-b\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(text) +
            b"--bin-b\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(blob) +
            b"--bin-b\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"nul=00byte\r\nend\r\n"
            b"--bin-b--\r\n")
    mbx = igw.create_mailbox()
    deliver(igw, mbx, mime_message(outer_headers("b64", 'multipart/mixed; boundary="bin-b"'),
                                   body))
    with session(igw, mbx, select=True) as c:
        s = Sections(c)
        s.expect("1", text, kind="BINARY")
        s.expect("2", blob, kind="BINARY")
        s.expect("3", b"nul\x00byte\r\nend", kind="BINARY")
        s.check()
        r = c.cmd("FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[3])")
        d = by_seq(r)[1]
        assert [as_int(d[f"BINARY.SIZE[{i}]"]) for i in (1, 2, 3)] == [len(text), 256, 13], r
        # decoded content with NUL goes out as literal8 (RFC 3516 §4.2; a NUL is never allowed
        # in a plain literal, RFC 3501 §4.3)
        r = c.cmd("FETCH 1 (BINARY.PEEK[2])")
        assert any(re.search(rb"BINARY\[2\] ~\{256\}\r\n", u) for u in r.untagged), \
            f"BINARY[2] is not sent as literal8 ~{{256}}: {r.untagged[0][:120]!r}"
        r = c.cmd("FETCH 1 (BINARY.PEEK[3])")
        assert any(re.search(rb"BINARY\[3\] ~\{13\}\r\n", u) for u in r.untagged), \
            f"BINARY[3] is not sent as literal8 ~{{13}}: {r.untagged[0][:120]!r}"
        r = c.cmd("FETCH 1 (BINARY.PEEK[2]<250.10>)")
        assert by_seq(r)[1].get("BINARY[2]<250>") == blob[250:], r
        c.cmd("LOGOUT")


def test_binary_unknown_cte(igw):
    """RFC 3516 §4.3: a CTE the server cannot decode -> NO [UNKNOWN-CTE]."""
    mbx = igw.create_mailbox()
    deliver(igw, mbx, build_message(subject="uue", body=b"begin 644 x\r\n`\r\nend\r\n",
                                    cte="x-uuencode"))
    with session(igw, mbx, select=True) as c:
        r = c.cmd("FETCH 1 (BINARY.PEEK[1])")
        assert r.status == "NO" and r.code == "UNKNOWN-CTE", r
        assert c.cmd("FETCH 1 (BODY.PEEK[1])").ok
        c.cmd("LOGOUT")


# =========================================================================== 3. ENVELOPE

ENVELOPE_CASES = {
    # name: (From, To, extra headers, {envelope index: expected address list})
    "group": ("alice@contoso.example",
              "group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;", (),
              {5: [[None, None, b"group", None], [None, None, b"g1", b"d1.org"],
                   [None, None, b"g2", b"d2.org"], [None, None, None, None],
                   [None, None, b"group2", None], [None, None, b"g3", b"d3.org"],
                   [None, None, None, None]]}),
    "comment-name": ("user@domain (Real Name)", "bob@contoso.example", (),
                     {2: [[b"Real Name", None, b"user", b"domain"]],
                      3: [[b"Real Name", None, b"user", b"domain"]],
                      4: [[b"Real Name", None, b"user", b"domain"]]}),
    "source-route": ("<@route:user@domain>", "bob@contoso.example", (),
                     {2: [[None, b"@route", b"user", b"domain"]]}),
    "empty-sender-reply-to": ("Alice Example <alice@contoso.example>", "bob@contoso.example",
                              ("Sender:", "Reply-To: "),
                              {2: [[b"Alice Example", None, b"alice", b"contoso.example"]],
                               3: [[b"Alice Example", None, b"alice", b"contoso.example"]],
                               4: [[b"Alice Example", None, b"alice", b"contoso.example"]]}),
    "undisclosed-recipients": ("alice@contoso.example", "undisclosed-recipients:;", (),
                               {5: [[None, None, b"undisclosed-recipients", None],
                                    [None, None, None, None]]}),
}
ENV_NAMES = ["date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
             "message-id"]


@pytest.mark.parametrize("case", list(ENVELOPE_CASES))
def test_envelope_addresses(igw, case):
    sender, to, extra, want = ENVELOPE_CASES[case]
    mbx = igw.create_mailbox()
    deliver(igw, mbx, build_message(subject=f"env {case}", sender=sender, to=to,
                                    extra_headers=extra))
    with session(igw, mbx, select=True) as c:
        r = c.cmd("FETCH 1 (ENVELOPE)")
        assert r.ok, r
        env = by_seq(r)[1]["ENVELOPE"]
        assert len(env) == 10, r
        bad = [f"{ENV_NAMES[i]}: got {env[i]!r}, expected {v!r}" for i, v in want.items()
               if env[i] != v]
        assert not bad, f"FETCH 1 (ENVELOPE) -> {r.untagged[0]!r}\n" + "\n".join(bad)
        c.cmd("LOGOUT")


def test_envelope_address_list_wire_form(igw):
    """RFC 3501 §9: env-to = "(" 1*address ")": addresses follow each other without a space."""
    mbx = igw.create_mailbox()
    sender, to, _, _ = ENVELOPE_CASES["group"]
    deliver(igw, mbx, build_message(subject="env wire", sender=sender, to=to))
    with session(igw, mbx, select=True) as c:
        r = c.cmd("FETCH 1 (ENVELOPE)")
        want = (b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")'
                b'(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")'
                b'(NIL NIL NIL NIL))')
        assert want in r.untagged[0], r.untagged[0]
        c.cmd("LOGOUT")


# =========================================================================== 4. keywords, flags


def test_keywords_store_fetch_search_and_announcements(igw):
    mbx, _ = fill(igw, 4)
    with session(igw, mbx) as c:
        r = c.select()
        pf = permanent_flags(r.untagged)
        assert len(pf) == 1 and "\\*" in pf[0] and SYSTEM_FLAGS <= set(pf[0]), r
        fls = flags_lines(r.untagged)
        assert len(fls) == 1 and set(fls[0]) == SYSTEM_FLAGS, r

        r = c.cmd("STORE 2,4 +FLAGS ($hello $world)")
        assert r.ok, r
        got = {n: fl(d) for n, d in by_seq(r).items()}
        assert got == {2: {"$hello", "$world"}, 4: {"$hello", "$world"}}, r
        # the new keywords are announced (FLAGS, and PERMANENTFLAGS still with \*)
        untagged = r.untagged + c.cmd("NOOP").untagged
        fls, pf = flags_lines(untagged), permanent_flags(untagged)
        assert fls and set(fls[-1]) == SYSTEM_FLAGS | {"$hello", "$world"}, untagged
        assert pf and set(pf[-1]) >= SYSTEM_FLAGS | {"$hello", "$world", "\\*"}, untagged

        r = c.cmd("STORE 1 FLAGS (\\Answered)")
        assert r.ok and {n: fl(d) for n, d in by_seq(r).items()} == {1: {"\\Answered"}}, r
        r = c.cmd("FETCH 1 FLAGS")
        assert r.ok and fl(by_seq(r)[1]) == {"\\Answered"}, r
        assert fl(by_seq(r)[1], recent=True) <= {"\\Answered", "\\Recent"}, r

        assert search(c, "KEYWORD $hello") == [2, 4]
        assert search(c, "UNKEYWORD $hello") == [1, 3]
        assert search(c, "KEYWORD $HELLO") == [2, 4], "keyword match is case-insensitive"
        assert search(c, "KEYWORD $World") == [2, 4]
        assert search(c, "KEYWORD $nothing") == []
        assert search(c, "UNKEYWORD $nothing") == [1, 2, 3, 4]
        assert search(c, "KEYWORD $hello ANSWERED") == []
        assert search(c, "OR KEYWORD $hello ANSWERED") == [1, 2, 4]

        # another spelling of an existing keyword is that keyword, not a new one
        r = c.cmd("STORE 3 +FLAGS ($HELLO)")
        assert r.ok and lower(fl(by_seq(r)[3])) == {"$hello"}, r
        untagged = r.untagged + c.cmd("NOOP").untagged
        for line in flags_lines(untagged):
            assert sorted(lower(line)) == sorted(set(lower(line))), f"two spellings: {line}"
        assert search(c, "KEYWORD $hello") == [2, 3, 4]
        r = c.cmd("STORE 2 -FLAGS ($HeLLo)")
        assert r.ok and fl(by_seq(r)[2]) == {"$world"}, r
        r = c.cmd("FETCH 1:4 (FLAGS)")
        assert {n: lower(fl(d)) for n, d in by_seq(r).items()} == \
            {1: {"\\answered"}, 2: {"$world"}, 3: {"$hello"}, 4: {"$hello", "$world"}}, r
        r = c.cmd("CHECK")
        assert r.ok, r
        c.cmd("LOGOUT")


def _keyword_state(gw, mbx):
    """(flags by number, FLAGS line, PERMANENTFLAGS line, KEYWORD $hello hits) in a new session."""
    with session(gw, mbx) as c:
        r = c.select()
        fls, pf = flags_lines(r.untagged), permanent_flags(r.untagged)
        got = {n: fl(d) for n, d in by_seq(c.cmd("FETCH 1:* (FLAGS)")).items()}
        hits = search(c, "KEYWORD $hello")
        c.cmd("LOGOUT")
        return got, set(fls[0]) if fls else None, set(pf[0]) if pf else None, hits


@pytest.mark.parametrize("how", ["new-session", "restart", "rebuild-index-live",
                                 "rebuild-index-stopped"])
def test_keywords_persist(igw, how):
    mbx, _ = fill(igw, 3)
    with session(igw, mbx, select=True) as c:
        assert c.cmd("STORE 1 +FLAGS ($hello \\Flagged)").ok
        assert c.cmd("STORE 3 +FLAGS ($hello $world \\Seen)").ok
        c.cmd("LOGOUT")
    want = {1: {"$hello", "\\Flagged"}, 2: set(), 3: {"$hello", "$world", "\\Seen"}}
    if how == "restart":
        igw.restart()
    elif how == "rebuild-index-live":
        rc, out, err = igw.cli_raw("rebuild-index")
        assert rc == 0, (out, err)
    elif how == "rebuild-index-stopped":
        igw.stop()
        (igw.data_dir / "index.redb").unlink()
        rc, out, err = igw.cli_raw("rebuild-index")
        assert rc == 0, (out, err)
        igw.start()
    got, fls, pf, hits = _keyword_state(igw, mbx)
    assert got == want, f"flags after {how}: {got}"
    assert fls == SYSTEM_FLAGS | {"$hello", "$world"}, f"FLAGS after {how}: {fls}"
    assert pf == SYSTEM_FLAGS | {"$hello", "$world", "\\*"}, f"PERMANENTFLAGS after {how}: {pf}"
    assert hits == [1, 3], hits


def test_keyword_named_nil(igw):
    """NIL is an atom, so `flag-keyword = atom` admits it (RFC 3501 §9). Either it is refused
    cleanly (NO/BAD, nothing stored), or it is a keyword like any other: in FETCH FLAGS, in the
    FLAGS announcement, and for SEARCH KEYWORD."""
    mbx, _ = fill(igw, 2)
    with session(igw, mbx, select=True) as c:
        r = c.cmd("STORE 1 +FLAGS (NIL)")
        f = c.cmd("FETCH 1 (FLAGS)")
        assert r.status in ("OK", "NO", "BAD"), r
        assert f.ok, f
        if r.status == "OK":
            assert re.search(rb"FLAGS \([^)]*\bNIL\b", f.untagged[0]), f
            untagged = r.untagged + c.cmd("NOOP").untagged
            assert any("NIL" in line for line in flags_lines(untagged)), untagged
            assert search(c, "KEYWORD NIL") == [1]
        else:
            assert b"NIL" not in f.untagged[0].split(b"FLAGS", 1)[1], f
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")


def test_flag_changes_apply_to_stored_flags_across_sessions(igw):
    mbx, _ = fill(igw, 2)
    with session(igw, mbx, select=True) as s1, session(igw, mbx, select=True) as s2:
        assert s1.cmd("STORE 1 +FLAGS (\\Seen)").ok
        r = s2.cmd("NOOP")
        assert fl(by_seq(r)[1]) == {"\\Seen"}, f"s2 not told of s1's \\Seen: {r!r}"
        # s1 adds \Draft; s2 (not told yet) removes \Seen: both changes apply
        assert s1.cmd("STORE 1 +FLAGS (\\Draft)").ok
        r = s2.cmd("STORE 1 -FLAGS (\\Seen)")
        assert r.ok and fl(by_seq(r)[1]) == {"\\Draft"}, r
        for name, c in (("s1", s1), ("s2", s2)):
            r = c.cmd("FETCH 1 FLAGS")
            assert r.ok and fl(by_seq(r)[1]) == {"\\Draft"}, (name, r)
        # a keyword defined in s1 reaches s2 with a FLAGS announcement before/with the FETCH
        assert s1.cmd("STORE 2 +FLAGS ($shared)").ok
        r = s2.cmd("NOOP")
        assert fl(by_seq(r).get(2, {"FLAGS": []})) == {"$shared"}, r
        fls = flags_lines(r.untagged)
        assert fls and "$shared" in fls[-1], f"no * FLAGS announcement of $shared in s2: {r!r}"
        assert s1.cmd("CHECK").ok and s2.cmd("CHECK").ok
        s1.cmd("LOGOUT")
        s2.cmd("LOGOUT")


def test_keyword_limit(igw):
    mbx, _ = fill(igw, 2)
    names = [f"$k{i:02d}" for i in range(1, 27)]
    with session(igw, mbx, select=True) as c:
        r = c.cmd(f"STORE 1 +FLAGS ({' '.join(names)})")
        assert r.ok and fl(by_seq(r)[1]) == set(names), r
        untagged = r.untagged + c.cmd("NOOP").untagged
        pf = permanent_flags(untagged)
        assert pf and "\\*" not in pf[-1] and set(names) <= set(pf[-1]), \
            f"PERMANENTFLAGS after 26 keywords: {pf}"
        r = c.cmd("STORE 2 +FLAGS ($k27)")
        assert r.status == "NO" and r.code == "LIMIT", r
        r = c.cmd("FETCH 2 (FLAGS)")
        assert fl(by_seq(r)[2]) == set(), r
        r = c.cmd("STORE 2 +FLAGS ($k05)")  # an existing keyword still works
        assert r.ok and fl(by_seq(r)[2]) == {"$k05"}, r
        c.cmd("LOGOUT")
    with session(igw, mbx) as c:
        r = c.select()
        pf = permanent_flags(r.untagged)
        assert len(pf) == 1 and "\\*" not in pf[0], r
        assert set(pf[0]) == SYSTEM_FLAGS | set(names), r
        assert set(flags_lines(r.untagged)[0]) == SYSTEM_FLAGS | set(names), r
        c.cmd("LOGOUT")


# =========================================================================== 5. \Recent


def test_recent_belongs_to_the_first_session(igw):
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as probe:
        assert status_of(probe.cmd("STATUS INBOX (RECENT MESSAGES)")) == \
            {"RECENT": 3, "MESSAGES": 3}
        with session(igw, mbx) as a:
            r = a.select()
            assert recent_counts(r.untagged) == [3], r
            r = a.cmd("FETCH 1:* (FLAGS)")
            assert all(has_recent(d) for d in by_seq(r).values()) and len(by_seq(r)) == 3, r
            assert search(a, "RECENT") == [1, 2, 3]
            assert a.cmd("STORE 2 +FLAGS (\\Seen)").ok
            assert search(a, "NEW") == [1, 3]
            assert search(a, "OLD") == []
            # the others: nothing is recent for them any more
            r = probe.cmd("STATUS INBOX (RECENT)")
            assert status_of(r) == {"RECENT": 0}, r
            with session(igw, mbx) as b:
                r = b.select()
                assert recent_counts(r.untagged) == [0], r
                r = b.cmd("FETCH 1:* (FLAGS)")
                assert not any(has_recent(d) for d in by_seq(r).values()), r
                assert search(b, "RECENT") == []
                assert search(b, "NEW") == []
                assert search(b, "OLD") == [1, 2, 3]
                b.cmd("LOGOUT")
            # still recent in a (for the rest of its session)
            r = a.cmd("FETCH 1:* (FLAGS)")
            assert all(has_recent(d) for d in by_seq(r).values()), r
            a.cmd("LOGOUT")
        with session(igw, mbx) as d:
            r = d.select()
            assert recent_counts(r.untagged) == [0], "\\Recent outlived its session: " + repr(r)
            d.cmd("LOGOUT")
        probe.cmd("LOGOUT")


def test_examine_does_not_take_recent(igw):
    """RFC 3501 §6.3.2: EXAMINE returns the same output as SELECT and MUST NOT cause messages
    to lose \\Recent."""
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as a:
        examined = a.cmd("EXAMINE INBOX")
        assert examined.ok and examined.code == "READ-ONLY", examined
        # first what MUST hold (nothing taken), then the count EXAMINE shows
        with session(igw, mbx) as probe:
            assert status_of(probe.cmd("STATUS INBOX (RECENT)")) == {"RECENT": 3}
            probe.cmd("LOGOUT")
        with session(igw, mbx) as b:
            r = b.select()
            assert recent_counts(r.untagged) == [3], r
            b.cmd("LOGOUT")
        assert recent_counts(examined.untagged) == [3], \
            f"EXAMINE INBOX (3 messages nobody has seen) -> {examined!r}"
        a.cmd("LOGOUT")


def test_recent_for_mail_arriving_while_selected(igw):
    mbx, _ = fill(igw, 2)
    problems = []  # RECENT-response problems, reported after the \Recent flag checks
    with session(igw, mbx) as a:
        a.select()
        deliver(igw, mbx, build_message(subject="live one"))
        seen = noop_until(a, lambda u: 3 in exists_counts(u))
        r = a.cmd("FETCH 3 (FLAGS)")
        assert has_recent(by_seq(r)[3]), r
        assert search(a, "RECENT") == [1, 2, 3]
        if recent_counts(seen)[-1:] != [3]:
            problems.append(f"a: NOOP after delivery -> {seen!r}, expected `* 3 RECENT` with "
                            "`* 3 EXISTS`")
        # two sessions selected: a new message is recent in exactly one of them
        with session(igw, mbx) as b:
            r = b.select()
            assert recent_counts(r.untagged) == [0], r
            deliver(igw, mbx, build_message(subject="live two"))
            seen_a = noop_until(a, lambda u: 4 in exists_counts(u))
            seen_b = noop_until(b, lambda u: 4 in exists_counts(u))
            ra = has_recent(by_seq(a.cmd("FETCH 4 (FLAGS)"))[4])
            rb = has_recent(by_seq(b.cmd("FETCH 4 (FLAGS)"))[4])
            assert ra != rb, f"message 4 \\Recent in a: {ra}, in b: {rb}"
            # the owner is told `* n RECENT` with its new count; the other one's count stays
            for name, seen, owns, now, was in (("a", seen_a, ra, 4, 3), ("b", seen_b, rb, 1, 0)):
                counts = recent_counts(seen)
                if owns and counts[-1:] != [now]:
                    problems.append(f"{name} (owns message 4): NOOP -> {seen!r}, expected "
                                    f"`* {now} RECENT`")
                if not owns and any(x != was for x in counts):
                    problems.append(f"{name}: NOOP -> {seen!r}, RECENT count changed")
            b.cmd("LOGOUT")
        a.cmd("LOGOUT")
    assert not problems, "\n".join(problems)


# =========================================================================== 6. CONDSTORE


def test_condstore_enable_modseq_and_store(igw):
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as c:
        caps = caps_of(c.cmd("CAPABILITY").lines("CAPABILITY")[0])
        assert {"CONDSTORE", "QRESYNC"} <= caps, caps
        r = c.cmd("ENABLE CONDSTORE")
        assert r.ok and r.lines("ENABLED") == [b"* ENABLED CONDSTORE"], r
        r = c.select()
        hm = highest_modseq(r)
        r = c.cmd("FETCH 1:* (FLAGS MODSEQ)")
        before = {n: modseq(d) for n, d in by_seq(r).items()}
        assert len(before) == 3 and all(1 <= m <= hm for m in before.values()), (hm, r)
        r = c.cmd("STORE 1 +FLAGS (\\Flagged)")
        assert r.ok, r
        d = by_seq(r)[1]
        assert "MODSEQ" in d, f"STORE under CONDSTORE: FETCH without MODSEQ: {r!r}"
        m1 = modseq(d)
        assert m1 > before[1] and m1 > hm, (before, hm, r)
        st = status_of(c.cmd("STATUS INBOX (HIGHESTMODSEQ)"))
        assert st == {"HIGHESTMODSEQ": m1}, (st, m1)
        r = c.cmd("FETCH 1:* (MODSEQ)")
        after = {n: modseq(d) for n, d in by_seq(r).items()}
        assert after == {**before, 1: m1}, (before, after)
        c.cmd("LOGOUT")


def test_condstore_modseq_of_new_messages(igw):
    """RFC 7162 §3.1: an appended message gets a mod-sequence higher than every message's in the
    mailbox; §3.1.2.1: HIGHESTMODSEQ is the highest of them; a message's mod-sequence changes
    only when its metadata does."""
    mbx, _ = fill(igw, 3)
    problems = []
    with session(igw, mbx) as c:
        hm = highest_modseq(c.cmd("SELECT INBOX (CONDSTORE)"))
        r = c.cmd("FETCH 1:* (MODSEQ)")
        first = [modseq(d) for _, d in sorted(by_seq(r).items())]
        if not (first[0] < first[1] < first[2]) or max(first) != hm:
            problems.append(f"right after delivery: HIGHESTMODSEQ {hm}, FETCH 1:* (MODSEQ) -> "
                            f"{r.untagged!r} (want increasing in delivery order, max == {hm})")
        deliver(igw, mbx, build_message(subject="arrives under CONDSTORE"))
        noop_until(c, lambda u: 4 in exists_counts(u))
        r = c.cmd("FETCH 4 (MODSEQ)")
        m4 = modseq(by_seq(r)[4])
        if m4 <= max([hm, *first]):
            problems.append(f"new message 4: FETCH 4 (MODSEQ) -> {r.untagged!r}, want > {hm}")
        r = c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hm})")
        if sorted(by_seq(r)) != [4]:
            problems.append(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hm}) -> {r.untagged!r}, want only "
                            "message 4 (the one that arrived)")
        c.cmd("LOGOUT")
    time.sleep(1.5)  # past the index commit; nothing changed meanwhile
    with session(igw, mbx) as c:
        c.cmd("SELECT INBOX (CONDSTORE)")
        r = c.cmd("FETCH 1:* (MODSEQ)")
        later = [modseq(d) for _, d in sorted(by_seq(r).items())]
        if later != first + [m4]:
            problems.append(f"no change, yet MODSEQs moved: {first + [m4]} -> {later}")
        c.cmd("LOGOUT")
    assert not problems, "\n".join(problems)


def test_condstore_fetch_changedsince(igw):
    mbx, _ = fill(igw, 4)
    with session(igw, mbx) as c:
        assert c.cmd("ENABLE CONDSTORE").ok
        hm = highest_modseq(c.select())
        uids = uid_map(c)
        assert c.cmd("STORE 2 +FLAGS (\\Flagged)").ok
        r = c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hm})")
        assert r.ok, r
        got = by_seq(r)
        assert list(got) == [2], f"CHANGEDSINCE {hm}: {r!r}"
        assert fl(got[2]) == {"\\Flagged"} and modseq(got[2]) > hm, r
        r = c.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hm})")
        got = by_seq(r)
        assert list(got) == [2] and as_int(got[2]["UID"]) == uids[1] and "MODSEQ" in got[2], r
        r = c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq(got[2])})")
        assert r.ok and not r.fetches(), r
        c.cmd("LOGOUT")


def test_condstore_store_unchangedsince(igw):
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as c:
        assert c.cmd("ENABLE CONDSTORE").ok
        hm = highest_modseq(c.select())
        uids = uid_map(c)
        assert c.cmd("STORE 1 +FLAGS (\\Flagged)").ok  # message 1 changes after hm
        r = c.cmd(f"STORE 1:3 (UNCHANGEDSINCE {hm}) +FLAGS (\\Seen)")
        assert r.status == "OK" and r.code == "MODIFIED 1", r
        got = by_seq(r)
        assert fl(got[2]) == {"\\Seen"} and fl(got[3]) == {"\\Seen"}, r
        assert all("MODSEQ" in got[n] for n in (2, 3)), r
        r = c.cmd("FETCH 1:3 (FLAGS)")
        assert {n: fl(d) for n, d in by_seq(r).items()} == \
            {1: {"\\Flagged"}, 2: {"\\Seen"}, 3: {"\\Seen"}}, r
        # UID STORE: MODIFIED lists UIDs
        hm2 = status_of(c.cmd("STATUS INBOX (HIGHESTMODSEQ)"))["HIGHESTMODSEQ"]
        assert c.cmd("STORE 3 +FLAGS (\\Answered)").ok
        r = c.cmd(f"UID STORE {uids[0]}:{uids[2]} (UNCHANGEDSINCE {hm2}) +FLAGS (\\Draft)")
        assert r.status == "OK" and r.code == f"MODIFIED {uids[2]}", r
        r = c.cmd("FETCH 1:3 (FLAGS)")
        assert {n: fl(d) for n, d in by_seq(r).items()} == \
            {1: {"\\Flagged", "\\Draft"}, 2: {"\\Seen", "\\Draft"},
             3: {"\\Seen", "\\Answered"}}, r
        c.cmd("LOGOUT")


def test_condstore_search_modseq(igw):
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as c:
        assert c.cmd("ENABLE CONDSTORE").ok
        hm = highest_modseq(c.select())
        r = c.cmd("STORE 2 +FLAGS (\\Flagged)")
        m2 = modseq(by_seq(r)[2])
        r = c.cmd(f"SEARCH MODSEQ {hm + 1}")
        assert r.ok and search_result(r) == ([2], m2), r
        r = c.cmd("SEARCH MODSEQ 1")
        nums, top = search_result(r)
        assert nums == [1, 2, 3] and top == m2, r
        r = c.cmd(f"SEARCH MODSEQ {m2 + 1}")
        assert r.ok and search_result(r) == ([], None), r
        r = c.cmd(f"UID SEARCH MODSEQ {m2}")
        assert search_result(r) == ([uid_map(c)[1]], m2), r
        c.cmd("LOGOUT")


def test_select_condstore_parameter_enables_condstore(igw):
    mbx, _ = fill(igw, 2)
    with session(igw, mbx, select=True) as c:  # CONDSTORE not enabled: no MODSEQ unasked
        r = c.cmd("STORE 1 +FLAGS (\\Flagged)")
        assert r.ok and "MODSEQ" not in by_seq(r)[1], r
        c.cmd("LOGOUT")
    with session(igw, mbx) as c:
        r = c.cmd("SELECT INBOX (CONDSTORE)")
        assert r.ok and r.code == "READ-WRITE", r
        hm = highest_modseq(r)
        r = c.cmd("STORE 2 +FLAGS (\\Flagged)")
        assert r.ok and modseq(by_seq(r)[2]) > hm, r
        c.cmd("LOGOUT")


def test_condstore_enabling_command_while_selected_returns_highestmodseq(igw):
    """RFC 7162 §3.1: "A first CONDSTORE enabling command executed in the session with a
    mailbox selected MUST cause the server to return HIGHESTMODSEQ" (example 5 of §3.1.3)."""
    mbx, _ = fill(igw, 1)
    with session(igw, mbx, select=True) as c:
        r = c.cmd("FETCH 1 (MODSEQ)")
        assert r.ok and "MODSEQ" in by_seq(r)[1], r
        assert len(r.code_value("HIGHESTMODSEQ")) == 1, \
            f"first CONDSTORE enabling command while selected: no * OK [HIGHESTMODSEQ n]: {r!r}"
        c.cmd("LOGOUT")


def test_condstore_unsolicited_fetches_carry_uid_and_modseq(igw):
    """RFC 7162 §3.1 and §3.2.4 (the server has QRESYNC): after a CONDSTORE enabling command
    every untagged FETCH from STORE, from an implicit \\Seen, or from another session's change
    carries UID and MODSEQ."""
    mbx, _ = fill(igw, 3)
    with session(igw, mbx) as c, session(igw, mbx, select=True) as other:
        assert c.cmd("ENABLE CONDSTORE").ok
        hm = highest_modseq(c.select())
        problems = []

        def check(what, r, n, flags):
            d = by_seq(r).get(n)
            if d is None or "FLAGS" not in d or fl(d) != flags or "UID" not in d \
                    or "MODSEQ" not in d \
                    or modseq(d) <= hm:
                problems.append(f"{what}: {r.untagged!r} (want FETCH {n} with UID, "
                                f"FLAGS {sorted(flags)}, MODSEQ > {hm})")

        assert other.cmd("STORE 2 +FLAGS (\\Flagged)").ok
        check("NOOP after another session's STORE 2 +FLAGS (\\Flagged)", _noop_resp(c), 2,
              {"\\Flagged"})
        check("STORE 1 +FLAGS (\\Answered)", c.cmd("STORE 1 +FLAGS (\\Answered)"), 1,
              {"\\Answered"})
        check("FETCH 3 (BODY[]) (implicit \\Seen)", c.cmd("FETCH 3 (BODY[])"), 3, {"\\Seen"})
        assert not problems, "\n".join(problems)
        c.cmd("LOGOUT")
        other.cmd("LOGOUT")


def _noop_resp(c, timeout=10.0):
    """NOOP until a response carries an untagged FETCH; that response."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.cmd("NOOP")
        if r.fetches() or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_condstore_unchangedsince_silent_and_zero(igw):
    mbx, _ = fill(igw, 2)
    with session(igw, mbx) as c:
        assert c.cmd("ENABLE CONDSTORE").ok
        hm = highest_modseq(c.select())
        # RFC 7162 §3.1.3: the FETCH with MODSEQ is sent even with .SILENT
        r = c.cmd(f"STORE 1 (UNCHANGEDSINCE {hm}) +FLAGS.SILENT (\\Seen)")
        assert r.ok and not r.code, r
        d = by_seq(r).get(1)
        assert d is not None and "MODSEQ" in d and modseq(d) > hm, \
            f"conditional STORE .SILENT: no untagged FETCH with MODSEQ: {r!r}"
        # UNCHANGEDSINCE 0 always fails (example 8)
        r = c.cmd("STORE 2 (UNCHANGEDSINCE 0) +FLAGS.SILENT ($MDNSent)")
        assert r.status in ("OK", "NO") and r.code == "MODIFIED 2", r
        r = c.cmd("FETCH 1:2 (FLAGS)")
        assert {n: fl(d) for n, d in by_seq(r).items()} == {1: {"\\Seen"}, 2: set()}, r
        c.cmd("LOGOUT")


# =========================================================================== 7. QRESYNC


def _qresync_setup(gw, n=5):
    """n messages; the UIDVALIDITY/HIGHESTMODSEQ/UIDs a QRESYNC client saw; then another session
    expunges message 3 and flags message 1. Returns (mbx, uv, hm, uids)."""
    mbx, _ = fill(gw, n)
    with session(gw, mbx) as c:
        r = c.cmd("ENABLE QRESYNC")
        assert r.ok, r
        assert r.lines("ENABLED") and b"QRESYNC" in r.lines("ENABLED")[0].upper().split(), r
        r = c.select()
        uv, hm = uidvalidity(r), highest_modseq(r)
        uids = uid_map(c)
        c.cmd("LOGOUT")
    with session(gw, mbx, select=True) as c:
        assert c.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)").ok
        assert c.cmd("EXPUNGE").expunged() == [3]
        assert c.cmd("STORE 1 +FLAGS (\\Flagged)").ok
        c.cmd("LOGOUT")
    return mbx, uv, hm, uids


def _qresync_select(gw, mbx, arg):
    c = raw_login(gw, mbx)
    assert c.cmd("ENABLE QRESYNC").ok
    return c, c.cmd(f"SELECT INBOX (QRESYNC ({arg}))")


def test_qresync_select_reports_vanished_and_changes(igw):
    mbx, uv, hm, uids = _qresync_setup(igw)
    c, r = _qresync_select(igw, mbx, f"{uv} {hm}")
    with closing(c):
        assert r.ok and r.code == "READ-WRITE", r
        assert r.exists() == [4], r
        v = vanished(r.untagged, earlier=True)
        assert len(v) == 1 and uids[2] in v[0], f"expected * VANISHED (EARLIER) {uids[2]}: {r!r}"
        assert not v[0] & (set(uids) - {uids[2]}), f"VANISHED names present UIDs: {r!r}"
        assert_vanished_first(r.untagged)
        got = by_seq(r)
        assert list(got) == [1], f"expected one FETCH, for message 1: {r!r}"
        d = got[1]
        assert as_int(d["UID"]) == uids[0] and fl(d) == {"\\Flagged"}, r
        assert modseq(d) > hm and highest_modseq(r) >= modseq(d), r
        assert not r.expunged(), r
        c.cmd("LOGOUT")


@pytest.mark.parametrize("known", ["all", "without-expunged"])
def test_qresync_select_with_known_uids(igw, known):
    mbx, uv, hm, uids = _qresync_setup(igw)
    if known == "all":
        kset, want = f"{uids[0]}:{uids[-1]}", {uids[2]}
    else:
        kset, want = ",".join(str(u) for u in uids if u != uids[2]), set()
    c, r = _qresync_select(igw, mbx, f"{uv} {hm} {kset}")
    with closing(c):
        assert r.ok, r
        v = vanished(r.untagged, earlier=True)
        got = set().union(*v) if v else set()
        assert got & set(uids) == want, f"QRESYNC ({uv} {hm} {kset}): {r!r}"
        assert got <= uid_set(kset), f"VANISHED outside the known UIDs {kset}: {r!r}"
        assert list(by_seq(r)) == [1], r
        c.cmd("LOGOUT")


def test_qresync_uid_fetch_vanished_and_stale_uidvalidity(igw):
    mbx, uv, hm, uids = _qresync_setup(igw)
    c, r = _qresync_select(igw, mbx, f"{uv + 1} {hm}")  # a stale UIDVALIDITY: a plain SELECT
    with closing(c):
        assert r.ok and r.exists() == [4], r
        assert not r.lines("VANISHED") and not r.fetches(), r
        r = c.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hm} VANISHED)")
        assert r.ok, r
        v = vanished(r.untagged, earlier=True)
        assert len(v) == 1 and uids[2] in v[0] and not v[0] & (set(uids) - {uids[2]}), r
        assert_vanished_first(r.untagged)
        got = by_seq(r)
        assert list(got) == [1] and as_int(got[1]["UID"]) == uids[0], r
        assert fl(got[1]) == {"\\Flagged"} and modseq(got[1]) > hm, r
        c.cmd("LOGOUT")


def test_qresync_without_enable_is_bad(igw):
    mbx, _ = fill(igw, 1)
    with session(igw, mbx) as c:
        uv = int(status_of(c.cmd("STATUS INBOX (UIDVALIDITY)"))["UIDVALIDITY"])
        r = c.cmd(f"SELECT INBOX (QRESYNC ({uv} 1))")
        assert r.status == "BAD", r
        assert c.cmd("SELECT INBOX").ok  # the session goes on
        c.cmd("LOGOUT")


def test_qresync_expunges_are_reported_as_vanished(igw):
    """RFC 7162 §3.2.10: once QRESYNC is enabled, expunges are VANISHED (no EXPUNGE); the
    numbers stay consistent with EXISTS."""
    mbx, _ = fill(igw, 4)
    with session(igw, mbx) as q, session(igw, mbx, select=True) as other:
        assert q.cmd("ENABLE QRESYNC").ok
        r = q.select()
        assert r.exists() == [4], r
        uids = uid_map(q)
        assert other.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)").ok
        assert other.cmd("EXPUNGE").expunged() == [2]
        problems = []
        seen = noop_until(q, lambda u: bool(vanished(u, earlier=False) or
                                             any(re.match(rb"^\* \d+ EXPUNGE$", x) for x in u)))
        if any(re.match(rb"^\* \d+ EXPUNGE$", x) for x in seen) or \
                vanished(seen, earlier=False) != [{uids[1]}]:
            problems.append(f"QRESYNC session, NOOP after another session expunged UID "
                            f"{uids[1]} -> {seen!r}, expected [b'* VANISHED {uids[1]}']")
        assert uid_map(q) == [uids[0], uids[2], uids[3]]
        # its own EXPUNGE too
        assert q.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)").ok
        r = q.cmd("EXPUNGE")
        assert r.ok, r
        if r.expunged() or vanished(r.untagged, earlier=False) != [{uids[3]}]:
            problems.append(f"QRESYNC session, own EXPUNGE of UID {uids[3]} (message 3) -> "
                            f"{r.untagged!r}, expected [b'* VANISHED {uids[3]}']")
        assert uid_map(q) == [uids[0], uids[2]]
        r = q.cmd("FETCH 1:* (UID)")
        assert sorted(by_seq(r)) == [1, 2], r
        # a session without QRESYNC still gets EXPUNGE with the right numbers
        r = noop_until(other, lambda u: any(re.match(rb"^\* \d+ EXPUNGE$", x) for x in u))
        assert [int(x.split()[1]) for x in r if re.match(rb"^\* \d+ EXPUNGE$", x)] == [3], r
        assert not vanished(r, earlier=False), r
        q.cmd("LOGOUT")
        other.cmd("LOGOUT")
    assert not problems, "\n".join(problems)


def _highest(gw, mbx) -> int:
    with session(gw, mbx) as p:
        v = status_of(p.cmd("STATUS INBOX (HIGHESTMODSEQ)"))["HIGHESTMODSEQ"]
        p.cmd("LOGOUT")
        return v


def test_qresync_expunge_increments_highestmodseq(igw):
    """RFC 7162 §3.2: EXPUNGE, UID EXPUNGE and CLOSE MUST increment the mailbox's mod-sequence;
    §3.2.7/§3.2.9: with QRESYNC enabled the tagged OK of EXPUNGE / UID EXPUNGE carries
    [HIGHESTMODSEQ n]; §3.2.8: CLOSE's does not."""
    mbx, _ = fill(igw, 4)
    problems = []
    with session(igw, mbx) as q:
        assert q.cmd("ENABLE QRESYNC").ok
        q.select()
        uids = uid_map(q)
        for what, prep, cmd in (("EXPUNGE", "STORE 2 +FLAGS.SILENT (\\Deleted)", "EXPUNGE"),
                                ("UID EXPUNGE", "STORE 1 +FLAGS.SILENT (\\Deleted)",
                                 f"UID EXPUNGE {uids[0]}")):
            assert q.cmd(prep).ok
            before = _highest(igw, mbx)
            r = q.cmd(cmd)
            assert r.ok, r
            after = _highest(igw, mbx)
            if after <= before:
                problems.append(f"{what}: STATUS HIGHESTMODSEQ {before} before, {after} after")
            if r.code != f"HIGHESTMODSEQ {after}":
                problems.append(f"{what} under QRESYNC -> tagged {r.status} {r.text!r}, expected "
                                f"OK [HIGHESTMODSEQ {after}]")
        assert q.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok  # uids[2] is message 1 now
        before = _highest(igw, mbx)
        r = q.cmd("CLOSE")
        assert r.ok, r
        after = _highest(igw, mbx)
        if after <= before:
            problems.append(f"CLOSE: STATUS HIGHESTMODSEQ {before} before, {after} after")
        if r.code and r.code.upper().startswith("HIGHESTMODSEQ"):
            problems.append(f"CLOSE -> {r.text!r}: MUST NOT carry HIGHESTMODSEQ")
        q.cmd("LOGOUT")
    with session(igw, mbx, select=True) as c:
        assert uid_map(c) == [uids[3]]
        c.cmd("LOGOUT")
    assert not problems, "\n".join(problems)


def test_qresync_vanished_modifier_errors(igw):
    """RFC 7162 §3.2.6: VANISHED is BAD without ENABLE QRESYNC, with FETCH (not UID FETCH), and
    without CHANGEDSINCE."""
    mbx, _ = fill(igw, 2)
    with session(igw, mbx) as c:
        assert c.cmd("SELECT INBOX (CONDSTORE)").ok
        r = c.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert r.status == "BAD", f"VANISHED without ENABLE QRESYNC: {r!r}"
        c.cmd("LOGOUT")
    with session(igw, mbx) as c:
        assert c.cmd("ENABLE QRESYNC").ok
        c.select()
        r = c.cmd("FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert r.status == "BAD", f"VANISHED with FETCH: {r!r}"
        r = c.cmd("UID FETCH 1:* (FLAGS) (VANISHED)")
        assert r.status == "BAD", f"VANISHED without CHANGEDSINCE: {r!r}"
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")


def test_reselect_sends_closed(igw):
    """RFC 7162 §3.2.11: a server advertising CONDSTORE/QRESYNC returns `* OK [CLOSED]` when
    SELECT/EXAMINE implicitly closes the selected mailbox (§3.2.5.1's example re-selects INBOX),
    whether or not CONDSTORE was enabled; not on UNSELECT/CLOSE."""
    mbx, _ = fill(igw, 1)
    with session(igw, mbx) as c:
        r = c.select()
        assert not r.code_value("CLOSED"), r
        r = c.cmd("EXAMINE INBOX")
        assert r.ok and r.code_value("CLOSED") and r.untagged[0].upper().startswith(
            b"* OK [CLOSED]"), f"re-selecting INBOX: no leading * OK [CLOSED]: {r!r}"
        r = c.cmd("UNSELECT")
        assert r.ok and not r.code_value("CLOSED"), r
        c.cmd("LOGOUT")


# =========================================================================== 8. archive


def _archive_setup(archive_gw, n=3):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    subjects = [f"per-user flags {i}" for i in range(n)]
    origs = [make_original(subject=s, sender=ALICE, to=BOB) for s in subjects]
    for o in origs:
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=o))
    wait_archived(gw, items=n, users=folder_counts({ALICE: {"Sent": origs},
                                                     BOB: {"INBOX": origs}}))
    return gw, users, subjects


def _by_subject(c) -> dict[str, int]:
    r = c.cmd("FETCH 1:* (ENVELOPE)")
    assert r.ok, r
    return {d["ENVELOPE"][1].decode(): n for n, d in by_seq(r).items()}


def _user_flags(gw, users, login, folder="INBOX", examine=True) -> dict[str, set[str]]:
    c = raw_user(gw, login, users[login]["password"])
    with closing(c):
        r = c.cmd(f"{'EXAMINE' if examine else 'SELECT'} {quote(folder)}")
        assert r.ok, r
        subj = _by_subject(c)
        r = c.cmd("FETCH 1:* (FLAGS)")
        flags = {n: fl(d) for n, d in by_seq(r).items()}
        c.cmd("LOGOUT")
        return {s: flags[n] for s, n in subj.items()}


def test_archive_user_inbox_keeps_per_user_flags(archive_gw):
    gw, users, subjects = _archive_setup(archive_gw)
    s0, s1, s2 = subjects
    c = raw_user(gw, BOB, users[BOB]["password"])
    with closing(c):
        r = c.cmd("SELECT INBOX")
        assert r.ok and r.code == "READ-WRITE", r
        pf = permanent_flags(r.untagged)
        assert len(pf) == 1 and set(pf[0]) == {"\\Answered", "\\Flagged", "\\Seen", "\\Draft",
                                                "\\*"}, r
        num = _by_subject(c)
        r = c.cmd(f"STORE {num[s0]} +FLAGS (\\Seen $label)")
        assert r.ok and fl(by_seq(r)[num[s0]]) == {"\\Seen", "$label"}, r
        r = c.cmd(f"STORE {num[s0]} +FLAGS (\\Deleted)")
        assert r.status in ("OK", "NO"), r
        r = c.cmd("EXPUNGE")
        assert r.status == "NO" and not r.expunged(), r
        # a non-peek body fetch sets \Seen for this user
        r = c.cmd(f"FETCH {num[s1]} (BODY[])")
        assert r.ok, r
        r = c.cmd(f"FETCH {num[s1]} (FLAGS)")
        assert fl(by_seq(r)[num[s1]]) == {"\\Seen"}, r
        c.cmd("LOGOUT")
    want = {s0: {"\\Seen", "$label"}, s1: {"\\Seen"}, s2: set()}
    assert _user_flags(gw, users, BOB) == want, "bob's flags in a new session"
    gw.restart()
    assert _user_flags(gw, users, BOB) == want, "bob's flags after a restart"
    # per user: alice (the same messages, in Sent) and the auditor see none of bob's flags
    assert _user_flags(gw, users, ALICE, "Sent") == {s: set() for s in subjects}
    assert _user_flags(gw, users, AUD, f"Users/{BOB}/INBOX") == {s: set() for s in subjects}
    # whatever the auditor may change in Users/bob/INBOX, it is not bob's
    c = raw_user(gw, AUD, users[AUD]["password"])
    with closing(c):
        r = c.cmd(f"SELECT {quote(f'Users/{BOB}/INBOX')}")
        assert r.ok, r
        r = c.cmd("STORE 1:* +FLAGS (\\Flagged $audit)")
        assert r.status in ("OK", "NO"), r
        c.cmd("LOGOUT")
    assert _user_flags(gw, users, BOB) == want, "bob's flags after the auditor's STORE"
    c = raw_user(gw, BOB, users[BOB]["password"])
    with closing(c):
        r = c.cmd("SELECT INBOX")
        pf = permanent_flags(r.untagged)
        assert pf and "$label" in pf[0] and "\\Deleted" not in pf[0], r
        c.cmd("LOGOUT")


def test_archive_user_examine_stays_read_only(archive_gw):
    gw, users, subjects = _archive_setup(archive_gw, n=2)
    c = raw_user(gw, BOB, users[BOB]["password"])
    with closing(c):
        r = c.cmd("EXAMINE INBOX")
        assert r.ok and r.code == "READ-ONLY", r
        num = _by_subject(c)
        n = num[subjects[0]]
        r = c.cmd(f"FETCH {n} (BODY[])")
        assert r.ok, r
        r = c.cmd(f"FETCH {n} (FLAGS)")
        assert fl(by_seq(r)[n]) == set(), f"BODY[] under EXAMINE set a flag: {r!r}"
        r = c.cmd(f"STORE {n} +FLAGS (\\Seen)")
        assert r.status == "NO", r
        c.cmd("LOGOUT")
    assert _user_flags(gw, users, BOB) == {s: set() for s in subjects}


def test_archive_select_another_folder_sends_closed(archive_gw):
    """RFC 7162 §3.2.11: SELECT/EXAMINE of another mailbox while one is selected: `* OK [CLOSED]`
    before the new mailbox's responses."""
    gw, users, _ = _archive_setup(archive_gw, n=1)
    c = raw_user(gw, BOB, users[BOB]["password"])
    with closing(c):
        assert c.cmd("SELECT INBOX").ok
        r = c.cmd("EXAMINE Sent")
        assert r.ok and r.untagged and r.untagged[0].upper().startswith(b"* OK [CLOSED]"), \
            f"SELECT INBOX, then EXAMINE Sent: no leading * OK [CLOSED]: {r!r}"
        c.cmd("LOGOUT")
