"""Helpers and fixture builders for the per-user journal archive (issue 4).

Builds on jgharness/imapharness.

Gateway
  `archive_gw(...)`  fixture (factory): a gateway with IMAP listeners and an `[archive]` section,
      plus one gateway mailbox (`g.jmbx`) that reports are sent to. `trusted=True` puts
      127.0.0.0/8 (where the tests connect from) in `journal_sources`.
  `add_user(gw, email, aliases=(), auditor=False)`  `journalgate user add ... --json`; the
      result (with the password) is remembered in `gw.archive_users[login]`.
  `send_report(gw, msg, sender=...)`  SMTP (STARTTLS) to the gateway mailbox.
  `wait_archived(gw, **expected)`  polls `journalgate archive stats --json` until `pending == 0`
      and every given counter matches (`users={login: {"inbox": n, "sent": n}}` is compared
      per given login).
  `check_archive(gw, expected, unknown)`  logs in as every archive user over IMAP and checks
      the exact set of folders each one sees and the exact messages (byte-identical, each
      once) in every folder; everything not in `expected` must be empty.
  `assert_alive(gw)`  the server still runs and answers SMTP, IMAP and the CLI.

IMAP (Python imaplib)
  `imap_user(gw, login, password)` an `imaplib.IMAP4` logged in after STARTTLS;
  `list_folders(c)` -> {name: {flags}}; `folder_messages(c, name)` -> {uid: bytes} (EXAMINE,
  UID FETCH BODY.PEEK[]); `raw_user(...)` the same login on a RawIMAP (exact responses).

Fixture builders (the tests write every fixture themselves)
  `make_original`, `journal_report`, `ndr_wrap`, `plain_message`, `qp_encode`.

Byte-exact expectations
  `originals_of(raw)` / `expected_original(raw)`: the `message/rfc822` part bodies of a journal
  report (inside an NDR too): from just after the blank line ending the part's header up to,
  not including, the CRLF (or LF) before the next boundary delimiter line. Own splitter; the
  email package is never used to re-serialise anything. `report_fields(raw)` reads the
  report part (for the corpus files).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import html
import imaplib
import os
import re
import time
import uuid

import pytest

from imapharness import (  # noqa: F401  (make_igw is a fixture re-exported for test modules)
    RawIMAP, imaplib_connect, make_igw, parse_sexp, quote, raw_connect,
)
from jgharness import Gateway, RawSMTP, deep_merge, send_smtp, smtp_connect, strip_received

JOURNAL_NDR = "journal.ndr@contoso.example"
EXCHANGE_SENDER = "<MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com>"
UNKNOWN = "Unknown Addresses"
ENVELOPES = "Journal Envelopes"
STATS_TIMEOUT = 60


# --------------------------------------------------------------------------- gateway


@pytest.fixture
def archive_gw(make_igw):
    """Factory: archive_gw(trusted=True, unknown_addresses="catch-all", journal_sources=None,
    envelope_headers=None, archive=None, overrides=None, imap=None, start=True).
    journal_sources=None -> 127.0.0.0/8 when trusted else 192.0.2.0/24; "omit" -> no key."""

    def factory(trusted=True, unknown_addresses="catch-all", journal_sources=None,
                envelope_headers=None, archive=None, overrides=None, imap=None,
                start=True) -> Gateway:
        if journal_sources is None:
            journal_sources = ["127.0.0.0/8"] if trusted else ["192.0.2.0/24"]
        section = {"enabled": True, "unknown_addresses": unknown_addresses, "retention_days": 0}
        if journal_sources != "omit":
            section["journal_sources"] = list(journal_sources)
        if envelope_headers is not None:
            section["envelope_headers"] = list(envelope_headers)
        section.update(archive or {})
        ov = deep_merge(overrides or {}, {"archive": section})
        g = make_igw(ov, start=start, imap=imap)
        g.archive_users = {}
        g.jmbx = g.create_mailbox(name="journal") if start else None
        return g

    return factory


def add_user(gw: Gateway, email: str, aliases=(), auditor=False, name=None) -> dict:
    args = ["user", "add", email]
    for a in aliases:
        args += ["--alias", a]
    if name is not None:
        args += ["--name", name]
    if auditor:
        args.append("--auditor")
    u = gw.cli(*args)
    assert u.get("login") == email.lower(), f"user add {email}: login {u.get('login')!r}"
    assert isinstance(u.get("password"), str) and len(u["password"]) >= 16, u
    assert str(u.get("id", "")).startswith("usr-"), u
    rec = dict(u, aliases=[a.lower() for a in aliases], auditor=auditor)
    if not hasattr(gw, "archive_users"):
        gw.archive_users = {}
    gw.archive_users[u["login"]] = rec
    return rec


def add_users(gw: Gateway, *emails, auditor=None) -> dict:
    """Adds plain users (and an auditor when given); returns {login: record}."""
    out = {}
    for e in emails:
        u = add_user(gw, e)
        out[u["login"]] = u
    if auditor:
        u = add_user(gw, auditor, auditor=True)
        out[u["login"]] = u
    return out


def send_report(gw: Gateway, msg: bytes, sender=JOURNAL_NDR, rcpts=None, tls="starttls"):
    refused = send_smtp(gw, rcpts or [gw.jmbx["address"]], msg, sender=sender, tls=tls)
    assert refused == {}, refused
    return msg


def send_bdat(gw: Gateway, msg: bytes, sender=JOURNAL_NDR, rcpt=None, chunk=None,
              body="8BITMIME"):
    """Send with BDAT chunks (CHUNKING) after STARTTLS; asserts every reply."""
    rcpt = rcpt or gw.jmbx["address"]
    with contextlib.closing(RawSMTP(gw.smtp_port)) as c:
        exts = {k.split()[0].upper() for k in c.ehlo()}
        assert "CHUNKING" in exts, exts
        c.starttls()
        c.ehlo()
        code, text = c.cmd(f"MAIL FROM:<{sender}> BODY={body}")
        assert code == 250, text
        code, text = c.cmd(f"RCPT TO:<{rcpt}>")
        assert code == 250, text
        chunk = chunk or len(msg)
        pos = 0
        while True:
            piece = msg[pos:pos + chunk]
            pos += len(piece)
            last = pos >= len(msg)
            c.send(f"BDAT {len(piece)}{' LAST' if last else ''}\r\n".encode() + piece)
            code, text = c.reply()
            assert code == 250, text
            if last:
                break
        assert c.cmd("QUIT")[0] == 221


def archive_stats(gw: Gateway) -> dict:
    return gw.cli("archive", "stats")


def _stats_mismatch(st: dict, expected: dict) -> list[str]:
    bad = []
    for k, v in expected.items():
        if k == "users":
            users = st.get("users") or {}
            for login, counts in v.items():
                got = users.get(login, {})
                for ck, cv in counts.items():
                    if got.get(ck, 0) != cv:
                        bad.append(f"users[{login}].{ck}: {got.get(ck, 0)} != {cv}")
        elif st.get(k) != v:
            bad.append(f"{k}: {st.get(k)!r} != {v!r}")
    return bad


def wait_archived(gw: Gateway, timeout=STATS_TIMEOUT, settle=6.0, **expected) -> dict:
    """Poll `archive stats` until pending == 0 and all expected counters match. Fails early
    when pending is 0 and nothing changed for `settle` seconds but counters still differ."""
    deadline = time.monotonic() + timeout
    last = None
    last_change = time.monotonic()
    while True:
        st = archive_stats(gw)
        bad = _stats_mismatch(st, expected)
        if st.get("pending") == 0 and not bad:
            return st
        now = time.monotonic()
        if st != last:
            last, last_change = st, now
        elif st.get("pending") == 0 and now - last_change > settle:
            raise AssertionError(f"archive stats settled (pending 0) but differ: {bad}\n"
                                 f"stats: {st}\n{gw.log_tail()}")
        if now > deadline:
            raise AssertionError(f"archive not done after {timeout}s: {bad or 'pending != 0'}\n"
                                 f"stats: {st}\n{gw.log_tail()}")
        time.sleep(0.2)


def assert_alive(gw: Gateway):
    """The server process runs and still answers SMTP, IMAP and the CLI."""
    assert gw.running, f"journalgate exited\n{gw.log_tail()}"
    with contextlib.closing(smtp_connect(gw, tls=None)) as s:
        code, _ = s.noop()
        assert code == 250, f"SMTP NOOP -> {code}\n{gw.log_tail()}"
        s.quit()
    c = RawIMAP(gw.imap_port)
    try:
        assert c.greeting.startswith(b"* OK"), c.greeting
        assert c.cmd("NOOP").ok
        c.cmd("LOGOUT")
    finally:
        c.close()
    archive_stats(gw)


# --------------------------------------------------------------------------- IMAP


def imap_user(gw: Gateway, login: str, password: str, mode="starttls") -> imaplib.IMAP4:
    c = imaplib_connect(gw, mode)
    try:
        typ, data = c.login(login, password)
    except imaplib.IMAP4.error as e:
        with contextlib.suppress(Exception):
            c.shutdown()
        raise AssertionError(f"IMAP LOGIN {login} refused: {e}\n{gw.log_tail()}") from None
    assert typ == "OK", data
    return c


def raw_user(gw: Gateway, login: str, password: str, mode="starttls") -> RawIMAP:
    c = raw_connect(gw, mode)
    r = c.cmd(f"LOGIN {quote(login)} {quote(password)}")
    assert r.ok, f"LOGIN {login}: {r}\n{gw.log_tail()}"
    return c


def mbox_arg(name: str) -> str:
    return quote(name)


def _list_items(data) -> list[bytes]:
    """imaplib LIST data (bytes lines; tuples when the name is a literal) -> raw lines."""
    items: list[bytes] = []
    prev_tuple = False
    for d in data:
        if d is None:
            continue
        if isinstance(d, tuple):
            items.append(d[0] + b"\r\n" + d[1])
            prev_tuple = True
        elif prev_tuple:
            items[-1] += d
            prev_tuple = False
        else:
            items.append(d)
    return items


def list_folders(c: imaplib.IMAP4, pattern="*") -> dict[str, set[str]]:
    """{folder name: {flags, lower-case}} from LIST "" pattern."""
    typ, data = c.list('""', quote(pattern))
    assert typ == "OK", data
    out = {}
    for item in _list_items(data):
        vals, _ = parse_sexp(item)
        assert len(vals) == 3 and isinstance(vals[0], list), f"odd LIST response {item!r}"
        flags, _delim, name = vals
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        assert name not in out, f"folder {name!r} listed twice: {data!r}"
        out[name] = {str(f).lower() for f in flags}
    return out


def selectable(folders: dict[str, set[str]]) -> set[str]:
    return {n for n, fl in folders.items() if not fl & {"\\noselect", "\\nonexistent"}}


def folder_messages(c: imaplib.IMAP4, folder: str) -> dict[int, bytes]:
    """{uid: BODY[]} of a folder, opened with EXAMINE."""
    typ, data = c.select(mbox_arg(folder), readonly=True)
    assert typ == "OK", f"EXAMINE {folder}: {typ} {data}"
    if int(data[0] or 0) == 0:
        return {}
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK", f"UID FETCH in {folder}: {typ} {data}"
    out = {}
    for i, d in enumerate(data):
        if not isinstance(d, tuple):
            continue
        m = re.search(rb"UID (\d+)", d[0])
        if not m and i + 1 < len(data) and isinstance(data[i + 1], bytes):
            m = re.search(rb"UID (\d+)", data[i + 1])
        assert m, f"no UID in FETCH response {d[0]!r}"
        uid = int(m.group(1))
        assert uid not in out, f"UID {uid} twice in {folder}"
        out[uid] = d[1]
    return out


def folder_info(c: imaplib.IMAP4, folder: str) -> tuple[int, dict[int, bytes]]:
    """(UIDVALIDITY, {uid: bytes}) of a folder."""
    msgs = folder_messages(c, folder)
    typ, data = c.response("UIDVALIDITY")
    assert data and data[0] is not None, f"no UIDVALIDITY for {folder}"
    return int(data[0]), msgs


def logout(c):
    with contextlib.suppress(Exception):
        c.logout()
    with contextlib.suppress(Exception):
        c.shutdown()


def user_snapshot(gw: Gateway, login: str) -> dict[str, tuple[int, dict[int, bytes]]]:
    """{folder: (UIDVALIDITY, {uid: bytes})} for every selectable folder of one user."""
    u = gw.archive_users[login]
    c = imap_user(gw, login, u["password"])
    try:
        return {f: folder_info(c, f) for f in sorted(selectable(list_folders(c)))}
    finally:
        logout(c)


# --------------------------------------------------------------------------- expectations


class Whole(bytes):
    """An expected archive item that is a whole received message (plain copy, report without
    original, forged report): matches the exact bytes, or the same bytes after one
    `Received:` field the gateway prepended."""


def matches(got: bytes, want: bytes) -> bool:
    if got == want:
        return True
    if isinstance(want, Whole) and got[:9].lower() == b"received:":
        try:
            return strip_received(got) == bytes(want)
        except (AssertionError, ValueError):
            return False
    return False


def header_value(msg: bytes, name: str) -> bytes | None:
    head, _, _ = split_head(msg)
    for f in header_fields(head):
        k, sep, v = f.partition(b":")
        if sep and k.strip().lower() == name.lower().encode():
            return re.sub(rb"\r?\n", b"", v).strip()
    return None


def describe(b: bytes) -> str:
    subj = header_value(b, "Subject")
    mid = header_value(b, "Message-ID")
    return (f"<{len(b)} bytes sha256 {hashlib.sha256(b).hexdigest()[:12]} "
            f"Message-ID {mid!r} Subject {subj[:60] if subj else subj!r}>")


def multiset_diff(got: list[bytes], want: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(missing expected items, unexpected/extra got items)."""
    left = list(got)
    missing = []
    for w in want:
        for i, g in enumerate(left):
            if matches(g, w):
                del left[i]
                break
        else:
            missing.append(w)
    return missing, left


def expected_folders(login: str, users: dict, unknown_listed=True) -> set[str]:
    want = {"INBOX", "Sent"}
    if users[login].get("auditor"):
        want |= {f"Users/{lg}/{f}" for lg in users for f in ("INBOX", "Sent")}
        want.add(ENVELOPES)
        if unknown_listed:
            want.add(UNKNOWN)
    return want


def check_archive(gw: Gateway, expected: dict | None = None, unknown=(), users=None,
                  logins=None) -> dict:
    """Every archive user (or `logins`) sees exactly the right folders and messages.

    expected: {login: {"INBOX": [bytes...], "Sent": [bytes...]}}; missing = empty.
    unknown: the expected content of `Unknown Addresses` (auditors only); None = the folder
    may be absent, but if present it must be empty.
    Returns {login: {folder: [bytes...]}} as seen."""
    expected = expected or {}
    users = users or gw.archive_users
    unknown_items = [] if unknown is None else list(unknown)
    for lg in expected:
        assert lg in users, f"expected content for {lg}, which is not an archive user"
    problems = []
    seen = {}
    for login in (logins or sorted(users)):
        u = users[login]
        c = imap_user(gw, login, u["password"])
        try:
            folders = list_folders(c)
            sel = selectable(folders)
            want = expected_folders(login, users)
            if unknown is None and UNKNOWN not in sel:
                want.discard(UNKNOWN)
            if sel != want:
                problems.append(f"{login}: folders {sorted(sel)}, expected {sorted(want)}")
            if "Sent" in folders and "\\sent" not in folders["Sent"]:
                problems.append(f"{login}: Sent has no \\Sent flag: {folders['Sent']}")
            seen[login] = {}
            for f in sorted(sel & want):
                got = list(folder_messages(c, f).values())
                seen[login][f] = got
                if f == ENVELOPES:
                    # Checked by the envelope tests; here only that each is an envelope.
                    problems += [f"{login}: not an envelope: {describe(m)}" for m in got
                                 if header_value(m, "X-Journal-Item") is None]
                    continue
                if f == UNKNOWN:
                    w = unknown_items
                elif f.startswith("Users/"):
                    _, owner, box = f.split("/", 2)
                    w = expected.get(owner, {}).get(box, [])
                else:
                    w = expected.get(login, {}).get(f, [])
                missing, extra = multiset_diff(got, w)
                if missing or extra:
                    problems.append(
                        f"{login} {f!r}: {len(got)} messages, expected {len(w)}; missing "
                        f"{[describe(m) for m in missing]}; unexpected {[describe(m) for m in extra]}")
        finally:
            logout(c)
    assert not problems, "archive content differs:\n  " + "\n  ".join(problems) + \
        "\n" + gw.log_tail()
    return seen


def place(expected: dict, login: str, folder: str, item: bytes):
    expected.setdefault(login, {}).setdefault(folder, []).append(item)


def address_map(users: dict) -> dict[str, str]:
    m = {}
    for login, u in users.items():
        m[login.lower()] = login
        for a in u.get("aliases", ()):
            m[a.lower()] = login
    return m


def expect_report(expected: dict, users: dict, fields: dict, item: bytes) -> dict:
    """Place one report's original by its fields: Sender/On-Behalf-Of -> Sent; To/Cc/Bcc/
    Recipient addresses and Forwarded: originals -> INBOX (each user once per folder)."""
    amap = address_map(users)
    sent, inbox = set(), set()
    for a in (fields.get("sender"), fields.get("on_behalf_of")):
        if a and a.lower() in amap:
            sent.add(amap[a.lower()])
    for r in fields.get("recipients", ()):
        for a in (r["address"], r.get("forwarded")):
            if a and a.lower() in amap:
                inbox.add(amap[a.lower()])
    for lg in sorted(sent):
        place(expected, lg, "Sent", item)
    for lg in sorted(inbox):
        place(expected, lg, "INBOX", item)
    return expected


def folder_counts(expected: dict) -> dict:
    """The `users` part of archive stats implied by an expectation."""
    return {lg: {"inbox": len(v.get("INBOX", [])), "sent": len(v.get("Sent", []))}
            for lg, v in expected.items()}


# --------------------------------------------------------------------------- MIME splitting


_HEAD_END = re.compile(rb"\r?\n\r?\n")


def split_head(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block incl. its last line ending, blank line, body) of an entity."""
    if data.startswith(b"\r\n"):
        return b"", b"\r\n", data[2:]
    if data.startswith(b"\n"):
        return b"", b"\n", data[1:]
    m = re.search(rb"\n(\r?\n)", data)
    if not m:
        return data, b"", b""
    return data[:m.start() + 1], m.group(1), data[m.end():]


def header_fields(head: bytes) -> list[bytes]:
    """Header fields with their folding kept (CRLF or LF)."""
    fields = re.split(rb"\r?\n(?![ \t])", head)
    return [f for f in fields if f.strip()]


def header_params(value: bytes) -> tuple[str, dict[str, str]]:
    """Content-Type value -> ("type/subtype" lower-case, {param: value})."""
    v = re.sub(rb"\r?\n[ \t]", b" ", value).decode("latin-1")
    ctype, _, rest = v.partition(";")
    params = {}
    for m in re.finditer(r';?\s*([A-Za-z0-9_\-*]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^;\s]+)', ";" + rest):
        params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
    return ctype.strip().lower(), params


def content_type(head: bytes) -> tuple[str, dict[str, str]]:
    for f in header_fields(head):
        k, sep, v = f.partition(b":")
        if sep and k.strip().lower() == b"content-type":
            return header_params(v)
    return "text/plain", {}


def field(head: bytes, name: str) -> bytes | None:
    for f in header_fields(head):
        k, sep, v = f.partition(b":")
        if sep and k.strip().lower() == name.lower().encode():
            return re.sub(rb"\r?\n", b"", v).strip()
    return None


def multipart_parts(body: bytes, boundary: str) -> list[bytes]:
    """Body parts of a multipart body: each from after its delimiter line's line ending to
    just before the CRLF (or LF) that precedes the next delimiter line."""
    delim = re.escape(b"--" + boundary.encode("latin-1"))
    pat = re.compile(rb"(?:\A|(?<=\n))" + delim + rb"(--)?[ \t]*(\r?\n|\Z)")
    marks = list(pat.finditer(body))
    parts = []
    for i, m in enumerate(marks):
        if m.group(1):  # close delimiter
            break
        start = m.end()
        if i + 1 >= len(marks):
            break  # no closing delimiter: a truncated part is not counted
        end = marks[i + 1].start()
        if body[end - 2:end] == b"\r\n":
            end -= 2
        elif body[end - 1:end] == b"\n":
            end -= 1
        parts.append(body[start:end])
    return parts


def _journal_marker(head: bytes) -> bool:
    for name in ("X-MS-Journal-Report", "X-MS-Exchange-Organization-Journal-Report",
                 "X-WM-Journal-Report"):
        if field(head, name) is not None:
            return True
    for name in ("Content-Identifier", "Content-Identifer"):
        v = field(head, name)
        if v is not None and v.strip().lower() == b"exjournalreport":
            return True
    return False


def _is_ndr(head: bytes) -> bool:
    ct, _ = content_type(head)
    return field(head, "X-MS-Exchange-Message-Is-Ndr") is not None or ct == "multipart/report"


def journal_parts(raw: bytes) -> list[tuple[bytes, bytes]] | None:
    """[(part header, part body)] of the journal report in raw (unwrapping an NDR), or None."""
    head, _, body = split_head(raw)
    ct, params = content_type(head)
    if _journal_marker(head):
        if not ct.startswith("multipart/"):
            return [(head, body)]
        return [split_head(p)[::2] for p in multipart_parts(body, params["boundary"])]
    if _is_ndr(head) and ct.startswith("multipart/"):
        for p in multipart_parts(body, params["boundary"]):
            ph, _, pb = split_head(p)
            if content_type(ph)[0] == "message/rfc822":
                inner = journal_parts(pb)
                if inner is not None:
                    return inner
    return None


def originals_of(raw: bytes) -> list[bytes]:
    """Every message/rfc822 part body of the journal report in raw (byte-exact)."""
    parts = journal_parts(raw)
    assert parts is not None, "not a journal report (nor an NDR carrying one)"
    return [b for h, b in parts if content_type(h)[0] == "message/rfc822"]


def is_irm(original: bytes) -> bool:
    head, _, _ = split_head(original)
    cc = field(head, "Content-Class")
    return (cc is not None and b"rpmsg" in cc.lower()) or b"application/x-microsoft-rpmsg" in \
        original.lower()


def expected_original(raw: bytes) -> bytes:
    """The original an archive folder should show: the only one, or the clear-text
    (decrypted) copy when the report also carries the IRM-protected original."""
    origs = originals_of(raw)
    assert origs, "the report has no original"
    clear = [o for o in origs if not is_irm(o)] if len(origs) > 1 else origs
    assert len(clear) == 1, f"{len(origs)} originals, {len(clear)} clear-text"
    return clear[0]


_FIELD_RE = re.compile(
    r"^(Sender|On-Behalf-Of|Subject|Message-I[Dd]|To|Cc|Bcc|Recipient|Recipients)\s*:\s?(.*)$",
    re.I)
_RCPT_RE = re.compile(r"^(.+?)(?:,\s*(Expanded|Forwarded):\s*(\S+))?\s*$", re.I)


def _addr(v: str) -> str:
    v = v.strip()
    m = re.search(r"<([^<>]*)>\s*$", v)
    if m:
        v = m.group(1)
    if v.lower().startswith("smtp:"):
        v = v[5:]
    return v.strip()


def decode_part(head: bytes, body: bytes) -> str:
    cte = (field(head, "Content-Transfer-Encoding") or b"7bit").strip().lower()
    if cte == b"quoted-printable":
        body = binascii.a2b_qp(body)
    elif cte == b"base64":
        body = base64.b64decode(re.sub(rb"\s+", b"", body))
    charset = content_type(head)[1].get("charset", "us-ascii")
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("latin-1")


def report_fields(raw: bytes) -> dict:
    """{sender, on_behalf_of, subject, message_id, recipients: [{kind, address, expanded,
    forwarded}]} from the first text part with a Sender: line."""
    for head, body in journal_parts(raw) or []:
        ct, _ = content_type(head)
        if not ct.startswith("text/"):
            continue
        text = decode_part(head, body)
        if ct == "text/html":
            text = html.unescape(re.sub(r"<[^>]*>", "", text))
        out = {"sender": None, "on_behalf_of": None, "subject": None, "message_id": None,
               "recipients": []}
        logical: list[str] = []
        for line in re.split(r"\r?\n", text):
            if line[:1] in (" ", "\t") and line.strip() and logical:
                logical[-1] += " " + line.strip()
            else:
                logical.append(line)
        for line in logical:
            m = _FIELD_RE.match(line)
            if not m:
                continue
            name, value = m.group(1).lower(), m.group(2).strip()
            if name == "sender":
                out["sender"] = _addr(value)
            elif name == "on-behalf-of":
                out["on_behalf_of"] = _addr(value)
            elif name == "subject":
                out["subject"] = value
            elif name == "message-id":
                out["message_id"] = value
            elif name == "recipients":
                for item in value.split(","):
                    if item.strip():
                        out["recipients"].append({"kind": "Recipient", "address": _addr(item)})
            else:
                r = _RCPT_RE.match(value)
                entry = {"kind": m.group(1), "address": _addr(r.group(1))}
                if r.group(2):
                    entry[r.group(2).lower()] = _addr(r.group(3))
                out["recipients"].append(entry)
        if out["sender"]:
            return out
    raise AssertionError("no report part with a Sender: line")


# --------------------------------------------------------------------------- builders


def _mid(tag="orig") -> str:
    return f"<{tag}-{os.urandom(6).hex()}@contoso.example>"


def make_original(subject="Quarterly numbers", sender="alice@contoso.example",
                  to="bob@contoso.example", cc=None, body: bytes | str = None, msgid=None,
                  date="Tue, 12 Mar 2024 09:30:00 +0000", extra_headers=(),
                  content_type="text/plain; charset=\"us-ascii\"", cte="7bit",
                  received=("from DM6PR11MB0001.namprd11.prod.outlook.com by "
                            "DM6PR11MB0002.namprd11.prod.outlook.com with HTTPS; "
                            "Tue, 12 Mar 2024 09:30:01 +0000",),
                  org_headers=(("X-MS-Exchange-Organization-AuthAs", "Internal"),
                               ("X-MS-Exchange-Organization-Network-Message-Id",
                                "0d6a1c5e-2b7f-4e8a-9c3d-000000000001"))) -> bytes:
    """A CRLF original message; Received / X-MS-Exchange-Organization-* fields included so
    dedup tests can vary them."""
    if body is None:
        body = f"Body of {subject}.\r\nSecond line.\r\n"
    if isinstance(body, str):
        body = body.encode("utf-8")
    msgid = msgid if msgid is not None else _mid()
    hdrs = [f"Received: {r}" for r in received]
    hdrs += [f"From: {sender}", f"To: {to}"]
    if cc:
        hdrs.append(f"Cc: {cc}")
    hdrs += [f"Subject: {subject}", f"Date: {date}"]
    if msgid:
        hdrs.append(f"Message-ID: {msgid}")
    hdrs += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    if cte:
        hdrs.append(f"Content-Transfer-Encoding: {cte}")
    hdrs += [f"{k}: {v}" for k, v in org_headers]
    hdrs += list(extra_headers)
    return ("\r\n".join(hdrs) + "\r\n\r\n").encode("utf-8") + body


def qp_encode(data: bytes, maxline=76) -> bytes:
    """Quoted-printable (RFC 2045) of CRLF text; encoded lines at most maxline characters
    (soft breaks `=` CRLF), never splitting an `=XX`."""
    out_lines = []
    for line in data.split(b"\r\n"):
        toks = []
        for i, b in enumerate(line):
            last = i == len(line) - 1
            if (33 <= b <= 126 and b != 61) or (b in (9, 32) and not last):
                toks.append(chr(b))
            else:
                toks.append(f"={b:02X}")
        cur = ""
        for t in toks:
            if len(cur) + len(t) > maxline - 1:
                out_lines.append(cur + "=")
                cur = ""
            cur += t
        out_lines.append(cur)
    return "\r\n".join(out_lines).encode("ascii")


def report_lines(sender, recipients, on_behalf_of=None, subject="", msgid="") -> list[str]:
    lines = [f"Sender: {sender}"]
    if on_behalf_of:
        lines.append(f"On-Behalf-Of: {on_behalf_of}")
    lines.append(f"Subject: {subject}")
    lines.append(f"Message-Id: {msgid}")
    for r in recipients:
        if isinstance(r, str):
            r = ("Recipient", r)
        line = f"{r[0]}: {r[1]}"
        if len(r) >= 4:
            line += f", {r[2]}: {r[3]}"
        lines.append(line)
    return lines


def report_2003_lines(sender, recipients, subject="", msgid="") -> list[str]:
    """Exchange 2003 envelope: `Sender: "N" <SMTP:a>`, `Recipients:` over several lines."""
    items = []
    for r in recipients:
        addr = r if isinstance(r, str) else r[1]
        items.append(addr if addr.startswith("<") else f"<SMTP:{addr}>")
    lines = [f'Sender: "{sender.split("@")[0]}" <SMTP:{sender}>', f"Subject: {subject}",
             f"Message-ID: {msgid}"]
    first, rest = items[:2], items[2:]
    lines.append("Recipients: " + ", ".join(first) + ("," if rest else ""))
    for i in range(0, len(rest), 2):
        chunk = rest[i:i + 2]
        more = i + 2 < len(rest)
        lines.append("\t" + ", ".join(chunk) + ("," if more else ""))
    return lines


MARKERS = {
    "X-MS-Journal-Report": ["X-MS-Journal-Report:"],
    "lowercase": ["x-ms-journal-report:"],
    "organization": ["X-MS-Exchange-Organization-Journal-Report:"],
    "2003": ["Content-Identifier: ExJournalReport", "Content-class: urn:content-classes:message"],
    "2003-misspelt": ["Content-Identifer: ExJournalReport",
                      "Content-class: urn:content-classes:message"],
}


def journal_report(sender="alice@contoso.example",
                   recipients=(("Recipient", "bob@contoso.example"),),
                   on_behalf_of=None, original: bytes | None = None,
                   originals: list[bytes] | None = None, subject=None, msgid=None,
                   report_cte="7bit", charset="us-ascii", html_report=False, lf_only=False,
                   marker="X-MS-Journal-Report", qp_maxline=76, report_body: bytes | None = None,
                   wrapper_headers=(), boundary=None, date="Tue, 12 Mar 2024 09:30:05 +0000",
                   extra_report_lines=(), original_cte=None) -> bytes:
    """An Exchange envelope journal report (multipart/mixed; report part; 0..n originals).

    recipients: ("Recipient"|"To"|"Cc"|"Bcc", addr[, "Expanded"|"Forwarded", addr]) or addr.
    subject/msgid default to the first original's Subject/Message-ID (msgid "" -> the
    literal `Unknown Message-ID`). report_cte: 7bit, 8bit, quoted-printable, base64.
    marker: a key of MARKERS. lf_only: the whole message with LF line endings.
    original_cte: a Content-Transfer-Encoding for the message/rfc822 parts ("base64" encodes
    them; any other value is only declared)."""
    if originals is None:
        originals = [original if original is not None else make_original(sender=sender)]
    first = originals[0] if originals else b""
    if subject is None:
        subject = (header_value(first, "Subject") or b"").decode("utf-8", "replace")
    if msgid is None:
        msgid = (header_value(first, "Message-ID") or b"").decode("utf-8", "replace")
    if msgid == "":
        msgid = "Unknown Message-ID"
    if report_body is None:
        if marker.startswith("2003"):
            lines = report_2003_lines(sender, recipients, subject, msgid)
        else:
            lines = report_lines(sender, recipients, on_behalf_of, subject, msgid)
        lines += list(extra_report_lines)
        if html_report:
            text = ("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; "
                    f"charset={charset}\"></head><body>\r\n"
                    + "".join(f"{html.escape(ln, quote=False)}<br>\r\n" for ln in lines)
                    + "</body></html>\r\n")
        else:
            text = "\r\n".join(lines) + "\r\n"
        raw_text = text.encode(charset)
        if report_cte == "quoted-printable":
            report_body = qp_encode(raw_text, qp_maxline)
        elif report_cte == "base64":
            report_body = base64.encodebytes(raw_text).replace(b"\n", b"\r\n")
        else:
            report_body = raw_text
    boundary = boundary or f"_{uuid.uuid4()}_"
    copy = {}
    for name in ("From", "To", "Cc", "Subject"):
        v = header_value(first, name) if first else None
        if v is not None:
            copy[name] = v.decode("utf-8", "replace")
    hdrs = [f"{k}: {v}" for k, v in copy.items()]
    hdrs += [
        "MIME-Version: 1.0",
        f"Sender:\r\n\t{EXCHANGE_SENDER}",
        f"Message-ID: <{uuid.uuid4()}@journal.report.generator>",
        f"Date: {date}",
        *MARKERS[marker],
        f"X-MS-Exchange-Parent-Message-Id: {msgid}",
        "Auto-Submitted: auto-generated",
        "X-MS-Exchange-Generated-Message-Source: Journal Agent",
        *wrapper_headers,
        f"Content-Type: multipart/mixed;\r\n\tboundary=\"{boundary}\"",
    ]
    b = boundary.encode()
    out = ("\r\n".join(hdrs) + "\r\n\r\n").encode("utf-8")
    out += b"--" + b + b"\r\n"
    out += (f"Content-Type: text/{'html' if html_report else 'plain'}; charset=\"{charset}\"\r\n"
            f"Content-Transfer-Encoding: {report_cte}\r\n\r\n").encode()
    out += report_body.rstrip(b"\r\n") + b"\r\n\r\n"
    for o in originals:
        out += b"--" + b + b"\r\nContent-Type: message/rfc822\r\n"
        if original_cte:
            out += f"Content-Transfer-Encoding: {original_cte}\r\n".encode()
            if original_cte.lower() == "base64":
                o = base64.encodebytes(o).replace(b"\n", b"\r\n").rstrip(b"\r\n")
        out += b"\r\n" + o + b"\r\n"
    out += b"--" + b + b"--\r\n"
    if lf_only:
        out = out.replace(b"\r\n", b"\n")
    return out


def ndr_wrap(report: bytes, journal_address="journal@gw.test",
             ndr_to="journal-ndr@contoso.example") -> bytes:
    """An Exchange Online NDR (multipart/report) carrying the whole report as message/rfc822."""
    b = f"_{uuid.uuid4()}_".encode()
    head = (
        "From: Microsoft Outlook\r\n"
        f"\t{EXCHANGE_SENDER}\r\n"
        f"To: <{ndr_to}>\r\n"
        "Date: Wed, 13 Mar 2024 09:31:00 +0000\r\n"
        "Subject: Undeliverable: journal report\r\n"
        f"Message-ID: <{uuid.uuid4()}@DM6PR11MB0002.namprd11.prod.outlook.com>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "X-MS-Exchange-Message-Is-Ndr:\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b.decode()}\"\r\n"
        "\r\n"
    ).encode()
    out = head + b"--" + b + b"\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n"
    out += (f"Delivery has failed to these recipients or groups:\r\n\r\n{journal_address}\r\n"
            "The message couldn't be delivered before it expired.\r\n\r\n").encode()
    out += b"--" + b + b"\r\nContent-Type: message/delivery-status\r\n\r\n"
    out += (f"Reporting-MTA: dns;DM6PR11MB0002.namprd11.prod.outlook.com\r\n\r\n"
            f"Final-Recipient: rfc822;{journal_address}\r\nAction: failed\r\nStatus: 4.4.7\r\n"
            "\r\n").encode()
    out += b"--" + b + b"\r\nContent-Type: message/rfc822\r\n\r\n" + report + b"\r\n"
    out += b"--" + b + b"--\r\n"
    return out


def plain_message(subject="plain copy", sender="partner@fabrikam.example",
                  to="carol@contoso.example", extra_headers=(), body=None, msgid=None) -> bytes:
    """A plain (non-journal) message, as a BCC/multidrop archive copy looks."""
    return make_original(subject=subject, sender=sender, to=to, extra_headers=extra_headers,
                         body=body, msgid=msgid, received=(), org_headers=())


__all__ = [
    "ENVELOPES", "JOURNAL_NDR", "MARKERS", "UNKNOWN", "Whole", "add_user", "add_users", "archive_gw",
    "archive_stats", "assert_alive", "check_archive", "describe", "expect_report",
    "expected_original", "folder_counts", "folder_info", "folder_messages", "header_value", "imap_user",
    "journal_report", "list_folders", "logout", "make_igw", "make_original", "matches",
    "ndr_wrap", "originals_of", "place", "plain_message", "qp_encode", "raw_user",
    "report_fields", "selectable", "send_bdat", "send_report", "user_snapshot",
    "wait_archived",
]
