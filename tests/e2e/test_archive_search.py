"""Reading the archive from its sealed summaries (README "Archive", *Reading at scale*):
SEARCH TEXT/BODY/SUBJECT, header FETCH and SORT answer exactly as the messages say, for the
user and for an auditor, with Python imaplib over STARTTLS; and neither the headers nor the
word index are anywhere under data_dir in the clear, with the server running or stopped."""

from __future__ import annotations

import base64
import os
import re

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    add_users, archive_gw, imap_user, journal_report, logout, make_igw, make_original,
    qp_encode, send_report, wait_archived,
)

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
AUD = "auditor@archive.example"


def uid_search(c, *criteria, charset=None) -> list[int]:
    try:
        typ, data = c.uid("SEARCH", *(("CHARSET", charset) if charset else ()), *criteria)
    except c.error as e:
        raise AssertionError(f"UID SEARCH {criteria}: {e}") from None
    assert typ == "OK", (criteria, data)
    return sorted(int(x) for x in data[0].split())


def originals(tag: str) -> dict[str, bytes]:
    """Four originals, each with words only it has (the tag makes them unique)."""
    text_b64 = base64.encodebytes(f"hidden{tag} in a base64 text part\r\n".encode()).replace(
        b"\n", b"\r\n")
    blob_b64 = base64.encodebytes(f"binary{tag} inside an attachment".encode()).replace(
        b"\n", b"\r\n")
    multipart = (b"--mpb\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + text_b64 +
                 b"--mpb\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + blob_b64 + b"--mpb--\r\n")
    long_word = f"supercalifragilistic{tag}"
    qp_body = qp_encode(f"{'x' * 70}{long_word} end\r\n".encode())
    assert long_word.encode() not in qp_body, "the soft break must split the word"
    return {
        "plain": make_original(subject=f"Quarterly{tag} figures", sender=ALICE, to=BOB,
                               body=f"the revenue{tag} grew again\r\n"),
        "multipart": make_original(subject=f"Attachments {tag}", sender=ALICE, to=BOB,
                                   content_type='multipart/mixed; boundary="mpb"', cte=None,
                                   body=multipart),
        "qp": make_original(subject=f"Soft breaks {tag}", sender=ALICE, to=BOB,
                            cte="quoted-printable", body=qp_body),
        "encoded": make_original(subject=f"=?utf-8?q?Gr=C3=BC=C3=9Fe_{tag}?=", sender=ALICE,
                                 to=BOB, body="nothing special\r\n"),
    }


def by_subject(c) -> dict[str, int]:
    """UID of each message by the tag-free start of its Subject."""
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    out = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            out[item[1].decode().split(":", 1)[1].strip()] = uid
    return out


def test_search_fetch_and_sort_from_summaries_match_the_messages(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    tag = os.urandom(5).hex()
    msgs = originals(tag)
    for o in msgs.values():
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=o))
    wait_archived(gw, items=4, users={BOB: {"inbox": 4}})

    for login, folder in ((BOB, "INBOX"), (AUD, f'"Users/{BOB}/INBOX"')):
        c = imap_user(gw, login, users[login]["password"])
        try:
            typ, data = c.select(folder)
            assert typ == "OK" and data == [b"4"], (login, data)
            subjects = by_subject(c)
            uid = {
                "plain": subjects[f"Quarterly{tag} figures"],
                "multipart": subjects[f"Attachments {tag}"],
                "qp": subjects[f"Soft breaks {tag}"],
                "encoded": subjects[f"=?utf-8?q?Gr=C3=BC=C3=9Fe_{tag}?="],
            }
            every = sorted(uid.values())
            checks = [
                (("TEXT", f"revenue{tag}"), [uid["plain"]]),
                (("BODY", f"REVENUE{tag}"), [uid["plain"]]),
                (("BODY", f"quarterly{tag}"), []),           # in the header only
                (("TEXT", f"quarterly{tag}"), [uid["plain"]]),
                (("TEXT", f'"revenue{tag} grew"'), [uid["plain"]]),   # a phrase: verified
                (("TEXT", f'"grew revenue{tag}"'), []),
                (("BODY", f"hidden{tag}"), [uid["multipart"]]),      # decoded base64 text
                (("TEXT", f"binary{tag}"), []),              # a non-text attachment
                (("BODY", f"supercalifragilistic{tag}"), [uid["qp"]]),  # across a soft break
                (("TEXT", f"absent{tag}"), []),
                (("NOT", "TEXT", f"revenue{tag}"), sorted(set(every) - {uid["plain"]})),
                (("OR", "BODY", f"hidden{tag}", "SUBJECT", f'"breaks {tag}"'),
                 sorted([uid["multipart"], uid["qp"]])),
                (("SUBJECT", f"quarterly{tag}"), [uid["plain"]]),
                (("FROM", "alice"), every),
                (("TO", "bob"), every),
                (("CC", "bob"), []),
                (("TEXT", tag), every),
                # the SEARCH fields part alone, then with the Date of the summary fields,
                # then a field only the whole header has
                (("SUBJECT", f"quarterly{tag}", "SENTSINCE", "1-Jan-2000"), [uid["plain"]]),
                (("SUBJECT", f"quarterly{tag}", "SENTBEFORE", "1-Jan-2000"), []),
                (("HEADER", "Message-ID", "@"), every),
                (("HEADER", "Content-Type", "multipart/mixed"), [uid["multipart"]]),
                (("NOT", "HEADER", "Content-Transfer-Encoding", "quoted-printable"),
                 sorted(set(every) - {uid["qp"]})),
            ]
            for criteria, want in checks:
                assert uid_search(c, *criteria) == want, (login, criteria, gw.log_tail())
            c.literal = f"Grüße {tag}".encode()
            assert uid_search(c, "SUBJECT", charset="UTF-8") == [uid["encoded"]], login

            # header fetches from the summary are byte-exact
            for name, o in msgs.items():
                typ, data = c.uid("FETCH", str(uid[name]), "(BODY.PEEK[HEADER] ENVELOPE)")
                assert typ == "OK", data
                head = o[:o.index(b"\r\n\r\n") + 4]
                assert data[0][1] == head, (login, name)
                assert f"Attachments {tag}".encode() in data[1] or name != "multipart", data
            typ, data = c.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
            assert typ == "OK", data
            order = [int(x) for x in data[0].split()]
            assert order == [uid["multipart"], uid["encoded"], uid["plain"], uid["qp"]], \
                (login, order, uid)
        finally:
            logout(c)

    # Nothing of the headers or the words in the clear: running, then stopped.
    words = [f"revenue{tag}", f"quarterly{tag}", f"hidden{tag}", f"supercalifragilistic{tag}",
             f"attachments {tag}", tag]
    for phase in ("running", "stopped"):
        if phase == "stopped":
            gw.stop()
        checked = 0
        for root, _dirs, files in os.walk(gw.data_dir):
            for name in files:
                path = os.path.join(root, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                checked += 1
                for w in words:
                    for form in {w, w.lower(), w.upper()}:
                        assert form.encode() not in data, f"{form!r} in the clear in {path} ({phase})"
        assert checked >= 3, checked
