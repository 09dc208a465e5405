"""IMAP server (issue 3): the shared journal-report corpus over SMTP in and IMAP out — exact
bytes, ENVELOPE and BODYSTRUCTURE; malformed, deeply nested and large messages."""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import email.utils
import os
import re
import smtplib

import pytest

from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    as_int, astr, build_message, igw, make_igw, norm_ws, raw_login,
)
from jgharness import CORPUS, crlf, send_smtp, smtp_connect, strip_received

CORPUS_FILES = sorted(CORPUS.glob("real/*.eml")) + sorted(CORPUS.glob("constructed/*.eml"))


def raw_header(msg: bytes, name: str) -> bytes | None:
    """The unfolded value of the first `name:` field of the top-level header, or None."""
    head = msg.split(b"\r\n\r\n", 1)[0]
    fields = re.split(rb"\r\n(?![ \t])", head)
    for f in fields:
        k, sep, v = f.partition(b":")
        if sep and k.strip().lower() == name.lower().encode():
            return v.replace(b"\r\n", b"").strip()
    return None


def one_fetch(c, cmd):
    r = c.cmd(cmd)
    assert r.ok, r
    merged = {}
    for _, d in r.fetches():
        merged.update(d)
    assert merged, r
    return merged


def addr_list(env_field):
    """ENVELOPE address list -> [(name, mailbox@host)]"""
    if env_field is None:
        return []
    out = []
    for a in env_field:
        name, _adl, mbox, host = a
        if host is None:  # group syntax markers
            continue
        out.append((norm_ws(name) if name is not None else None,
                    f"{astr(mbox)}@{astr(host)}"))
    return out


def check_envelope(env, msg: bytes):
    assert isinstance(env, list) and len(env) == 10, env
    for idx, hdr in ((0, "Date"), (1, "Subject"), (8, "In-Reply-To"), (9, "Message-ID")):
        want = raw_header(msg, hdr)
        if want is None:
            assert env[idx] is None, (hdr, env[idx])
        else:
            assert norm_ws(env[idx]) == norm_ws(want), (hdr, env[idx], want)
    for idx, hdr in ((2, "From"), (5, "To"), (6, "Cc")):
        want = raw_header(msg, hdr)
        if want is None:
            assert env[idx] is None or hdr == "From", (hdr, env[idx])
            continue
        parsed = email.utils.getaddresses([want.decode("utf-8", "replace")])
        want_addrs = [a.lower() for _, a in parsed if "@" in a]
        got_addrs = [a.lower() for _, a in addr_list(env[idx])]
        assert got_addrs == want_addrs, (hdr, env[idx], want)
    # Sender and Reply-To default to From (RFC 3501 7.4.2)
    for idx, hdr in ((3, "Sender"), (4, "Reply-To")):
        if raw_header(msg, hdr) is None:
            assert env[idx] == env[2], (hdr, env[idx], env[2])


def mime_tree(m: email.message.Message):
    ct = m.get_content_type()
    if m.is_multipart() and ct.startswith("multipart/"):
        return (ct, [mime_tree(p) for p in m.get_payload()])
    return (ct, None)


def bs_type(bs):
    """(type/subtype, [children] or None) of a parsed BODYSTRUCTURE."""
    if isinstance(bs[0], list):
        kids = []
        i = 0
        while i < len(bs) and isinstance(bs[i], list):
            kids.append(bs[i])
            i += 1
        return f"multipart/{astr(bs[i]).lower()}", kids
    return f"{astr(bs[0]).lower()}/{astr(bs[1]).lower()}", None


def boundary_of(msg: bytes) -> bytes:
    ct = raw_header(msg, "Content-Type")
    m = re.search(rb'boundary\s*=\s*"?([^";\s]+)"?', ct, re.I)
    assert m, ct
    return m.group(1)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not present at {CORPUS}")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_over_imap(igw, path):
    original = crlf(path.read_bytes())
    sender = "" if "ndr-wrapped" in path.name else "journal.ndr@contoso.example"
    mbx = igw.create_mailbox()
    send_smtp(igw, mbx["address"], original, sender=sender)
    py = email.message_from_bytes(original, policy=email.policy.compat32)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        d = one_fetch(c, "UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] "
                         "BODY.PEEK[TEXT] ENVELOPE BODYSTRUCTURE)")
        stored = d["BODY[]"]
        assert strip_received(stored) == original
        assert as_int(d["RFC822.SIZE"]) == len(stored)
        assert d["BODY[HEADER]"] + d["BODY[TEXT]"] == stored
        check_envelope(d["ENVELOPE"], original)
        # BODYSTRUCTURE: top-level type, number of parts, and the parts' types
        want_type, want_kids = mime_tree(py)
        got_type, got_kids = bs_type(d["BODYSTRUCTURE"])
        assert got_type == want_type, (got_type, want_type)
        if want_kids is not None:
            assert got_kids is not None and len(got_kids) == len(want_kids), \
                (d["BODYSTRUCTURE"], want_kids)
            assert [bs_type(k)[0] for k in got_kids] == [t for t, _ in want_kids]
            # each part's MIME header + body is exactly the bytes between the boundaries
            b = boundary_of(original)
            for i, kid in enumerate(got_kids, 1):
                p = one_fetch(c, f"UID FETCH 1:* (BODY.PEEK[{i}.MIME] BODY.PEEK[{i}])")
                whole = p[f"BODY[{i}.MIME]"] + p[f"BODY[{i}]"]
                pos = original.find(b"--" + b + b"\r\n" + whole + b"\r\n--" + b)
                assert pos >= 0, f"part {i} does not match the original bytes"
                kid_type, grandkids = bs_type(kid)
                if grandkids is None and kid_type != "message/rfc822":
                    assert as_int(kid[6]) == len(p[f"BODY[{i}]"]), (i, kid)
                elif kid_type == "message/rfc822":
                    # the encapsulated message's envelope, computed from the part itself
                    inner = p[f"BODY[{i}]"]
                    check_envelope(kid[7], inner)
        c.cmd("LOGOUT")


def test_corpus_present():
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not present at {CORPUS}")
    assert len(CORPUS_FILES) >= 8, CORPUS_FILES


MALFORMED = {
    "headers-only": b"From: a@contoso.example\r\nSubject: no body at all\r\n",
    "no-boundary-param": (b"From: a@contoso.example\r\nSubject: broken multipart\r\n"
                          b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n"
                          b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n"),
    "unclosed-multipart": (b"From: a@contoso.example\r\nSubject: unclosed\r\nMIME-Version: 1.0\r\n"
                           b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n'
                           b"--zz\r\nContent-Type: text/plain\r\n\r\nnever closed\r\n"),
    "garbage-headers": (b"this is not a header\r\nFrom a@contoso.example\r\n: empty name\r\n"
                        b"Subject: \xff\xfe invalid utf-8 \xc3\x28\r\n"
                        b"Content-Type: ;;;===\r\nContent-Transfer-Encoding: base99\r\n\r\n"
                        b"body \x01\x02\x7f\r\n"),
    "bad-base64": (b"From: a@contoso.example\r\nSubject: bad base64\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   b"!!!! not base64 at all ====\r\n"),
    "rfc822-part-empty": (b"From: a@contoso.example\r\nSubject: empty inner\r\nMIME-Version: 1.0\r\n"
                          b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n'
                          b"--q\r\nContent-Type: message/rfc822\r\n\r\n\r\n--q--\r\n"),
    "encoded-words": (b"From: =?utf-8?q?J=C3=B6rg?= <j@contoso.example>\r\n"
                      b"Subject: =?utf-8?b?w5xiZXJzaWNodA==?= =?broken?=\r\n"
                      b"To: undisclosed-recipients:;\r\n\r\nbody\r\n"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_message_still_fetches(igw, name):
    msg = MALFORMED[name]
    mbx = igw.create_mailbox()
    send_smtp(igw, mbx["address"], msg)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        d = one_fetch(c, "FETCH 1 (RFC822.SIZE BODY.PEEK[] ENVELOPE BODYSTRUCTURE BODY "
                         "BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1])")
        assert strip_received(d["BODY[]"]) == msg
        assert as_int(d["RFC822.SIZE"]) == len(d["BODY[]"])
        assert d["BODY[HEADER]"] + d["BODY[TEXT]"] == d["BODY[]"]
        assert isinstance(d["ENVELOPE"], list) and len(d["ENVELOPE"]) == 10
        assert isinstance(d["BODYSTRUCTURE"], list) and isinstance(d["BODY"], list)
        t, _ = bs_type(d["BODYSTRUCTURE"])
        assert re.match(r"^[a-z0-9.+-]+/[a-z0-9.+-]+$", t), t
        if name == "headers-only":
            assert d["BODY[TEXT]"] == b"" and t == "text/plain", d
        r = c.cmd("SEARCH TEXT body")
        assert r.ok, r
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")


def test_deeply_nested_mime(igw):
    """2,000 nested multiparts must not overflow the parser's stack: the message still
    fetches (its structure may be degraded) and the server stays up."""
    depth = 2000
    head = b"From: a@contoso.example\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    parts = []
    for i in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    body = b"".join(parts) + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    body += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    msg = head + body
    also = build_message(subject="neighbour")
    mbx = igw.create_mailbox()
    send_smtp(igw, mbx["address"], msg)
    send_smtp(igw, mbx["address"], also)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        d = one_fetch(c, "FETCH 1 (BODY.PEEK[] BODYSTRUCTURE ENVELOPE)")
        assert strip_received(d["BODY[]"]) == msg
        assert isinstance(d["BODYSTRUCTURE"], list)
        d = one_fetch(c, "FETCH 2 (BODY.PEEK[] BODYSTRUCTURE)")
        assert strip_received(d["BODY[]"]) == also
        r = c.cmd("FETCH 1 (BODY.PEEK[1.1.1.1.1.1.1.1.1.1])")
        assert r.status in ("OK", "NO"), r
        r = c.cmd("SEARCH BODY deep")
        assert r.ok, r
        c.cmd("LOGOUT")
    assert igw.running


def test_large_message_partial_fetch_and_binary(igw):
    """3 MB attachment: Thunderbird-style chunked partial fetches reassemble the exact bytes,
    BINARY.PEEK decodes the attachment."""
    payload = os.urandom(3 * 1024 * 1024)
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    msg = (b"From: a@contoso.example\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n'
           b"--big\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
           b"--big\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 +
           b"--big--\r\n")
    mbx = igw.create_mailbox()
    send_smtp(igw, mbx["address"], msg)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        d = one_fetch(c, "FETCH 1 (RFC822.SIZE BODYSTRUCTURE)")
        size = as_int(d["RFC822.SIZE"])
        chunks = []
        off = 0
        while off < size:
            d = one_fetch(c, f"UID FETCH 1:* (BODY.PEEK[]<{off}.65536>)")
            chunk = d[f"BODY[]<{off}>"]
            assert chunk, off
            chunks.append(chunk)
            off += len(chunk)
        stored = b"".join(chunks)
        assert len(stored) == size and strip_received(stored) == msg
        d = one_fetch(c, "FETCH 1 (BINARY.PEEK[2])")
        assert d["BINARY[2]"] == payload
        d = one_fetch(c, "FETCH 1 (BODY.PEEK[2]<1000.100>)")
        assert d["BODY[2]<1000>"] == b64.rstrip(b"\r\n")[1000:1100]
        c.cmd("LOGOUT")


def test_many_messages_select_and_fetch(igw):
    """300 messages: SELECT, FETCH 1:* of headers (neomutt's first fetch), UID SEARCH."""
    mbx = igw.create_mailbox()
    msgs = []
    with contextlib.closing(smtp_connect(igw)) as s:
        for i in range(300):
            m = build_message(subject=f"bulk {i:03d}", body=f"bulk body {i}\r\n")
            s.sendmail("journal@contoso.example", [mbx["address"]], m)
            msgs.append(m)
        with contextlib.suppress(smtplib.SMTPException):
            s.quit()
    with contextlib.closing(raw_login(igw, mbx)) as c:
        r = c.cmd("SELECT INBOX")
        assert r.exists() == [300], r
        r = c.cmd("FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
                  "(DATE FROM SENDER SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE "
                  "CONTENT-DESCRIPTION IN-REPLY-TO REPLY-TO LINES LIST-POST X-LABEL)])")
        assert r.ok, r
        f = sorted(r.fetches())
        assert [n for n, _ in f] == list(range(1, 301))
        uids = [as_int(d["UID"]) for _, d in f]
        assert uids == sorted(uids) and len(set(uids)) == 300
        for i, (_, d) in enumerate(f):
            (v,) = [v for k, v in d.items() if k.startswith("BODY[HEADER.FIELDS")]
            assert f"Subject: bulk {i:03d}\r\n".encode() in v
        r = c.cmd("UID SEARCH SUBJECT \"bulk 29\"")
        assert sorted(r.search()) == [uids[i] for i in range(290, 300)], r
        r = c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        assert [strip_received(d["BODY[]"]) for _, d in sorted(r.fetches())] == msgs
        c.cmd("LOGOUT")
