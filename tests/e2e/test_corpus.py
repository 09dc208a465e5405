"""Journal reports round-trip byte for byte: SMTP in (STARTTLS), POP3 RETR out."""

from __future__ import annotations

import pytest

from jgharness import CORPUS, crlf, pop3_fetch_all, send_smtp, strip_received

CORPUS_FILES = sorted(CORPUS.glob("real/*.eml")) + sorted(CORPUS.glob("constructed/*.eml"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not present at {CORPUS}")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_roundtrip(gw, path):
    original = crlf(path.read_bytes())
    is_ndr = "ndr-wrapped" in path.name
    sender = "" if is_ndr else "journal.ndr@contoso.example"
    mbx = gw.create_mailbox()
    send_smtp(gw, mbx["address"], original, sender=sender)
    got = pop3_fetch_all(gw, mbx)
    assert len(got) == 1
    assert strip_received(got[0][1]) == original


def test_corpus_present():
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not present at {CORPUS}")
    assert len(CORPUS_FILES) >= 8, CORPUS_FILES


# --------------------------------------------------------------------- own fixtures

def journal_report(boundary="jrnl-b0undary", original_body=None, report_cte="7bit") -> bytes:
    """A minimal Exchange-style journal report (CRLF) whose embedded original has
    an 8-bit UTF-8 body."""
    if original_body is None:
        original_body = ("Gr\u00fc\u00dfe aus K\u00f6ln, \u65e5\u672c\u8a9e, \u00e9t\u00e9\r\n"
                         ".a line starting with a dot\r\n"
                         "..and one with two\r\n"
                         "\r\n"
                         "Regards\r\n").encode("utf-8")
    original = (
        b"From: Alice Example <alice@contoso.example>\r\n"
        b"To: Bob Example <bob@fabrikam.example>\r\n"
        b"Subject: =?utf-8?q?Quartalsbericht_f=C3=BCr_Q3?=\r\n"
        b"Date: Mon, 16 Nov 2026 09:58:00 +0000\r\n"
        b"Message-ID: <orig-4711@contoso.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + original_body
    )
    report = (
        b"Sender: alice@contoso.example\r\n"
        b"Subject: Quartalsbericht f\xc3\xbcr Q3\r\n"
        b"Message-Id: <orig-4711@contoso.example>\r\n"
        b"To: bob@fabrikam.example\r\n"
        b"Recipient: bob@fabrikam.example\r\n"
    )
    b = boundary.encode()
    return (
        b"From: Alice Example <alice@contoso.example>\r\n"
        b"To: Bob Example <bob@fabrikam.example>\r\n"
        b"Subject: Quartalsbericht\r\n"
        b"Sender: <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com>\r\n"
        b"Message-ID: <0a1b2c3d@journal.report.generator>\r\n"
        b"Date: Mon, 16 Nov 2026 09:58:05 +0000\r\n"
        b"X-MS-Journal-Report:\r\n"
        b"X-MS-Exchange-Parent-Message-Id: <orig-4711@contoso.example>\r\n"
        b"Auto-Submitted: auto-generated\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"" + b + b"\"\r\n"
        b"\r\n"
        b"--" + b + b"\r\n"
        b"Content-Type: text/plain; charset=\"utf-8\"\r\n"
        b"Content-Transfer-Encoding: " + report_cte.encode() + b"\r\n"
        b"\r\n" + report + b"\r\n"
        b"--" + b + b"\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n" + original + b"\r\n"
        b"--" + b + b"--\r\n"
    )


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_constructed_8bit_journal_report(gw, tls):
    msg = journal_report(report_cte="8bit")
    assert any(c >= 0x80 for c in msg)
    assert b"\r\n" in msg and b"\n" not in msg.replace(b"\r\n", b"")
    a = gw.create_mailbox(name="journal")
    ndr = gw.create_mailbox(name="undeliverable journal reports")
    send_smtp(gw, [a["address"]], msg, tls=tls)
    send_smtp(gw, [ndr["address"]], msg, sender="", tls=tls)
    for mbx in (a, ndr):
        got = pop3_fetch_all(gw, mbx)
        assert [strip_received(x) for _, x in got] == [msg]


def test_binary_ish_and_long_lines(gw):
    """8-bit bytes of every value except CR/LF/NUL, lines up to 998 octets."""
    body = bytes(b for b in range(1, 256) if b not in (10, 13))
    lines = [body, b"x" * 998, b"\xff" * 998, b"", b"." * 997, b"end"]
    msg = journal_report(original_body=b"\r\n".join(lines) + b"\r\n")
    mbx = gw.create_mailbox()
    send_smtp(gw, mbx["address"], msg)
    got = pop3_fetch_all(gw, mbx)
    assert [strip_received(x) for _, x in got] == [msg]
