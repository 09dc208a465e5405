"""RFC 5267 contexts (CONTEXT=SEARCH, CONTEXT=SORT) end to end over real sockets: PARTIAL
result windows (and RFC 9394's ranges from the end), updating SEARCH and SORT results with
ADDTO / REMOVEFROM as mail arrives, flags change (in this session and another) and messages
are expunged (REMOVEFROM before the EXPUNGE), CANCELUPDATE, tag reuse, the errors; in a
gateway mailbox and in an archive folder (read-only: new archive items are announced)."""

from __future__ import annotations

import contextlib
import re
import time

from archiveharness import (  # noqa: F401  (archive_gw is a fixture)
    add_users, archive_gw, journal_report, make_original, raw_user, send_report, wait_archived,
)
from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    build_message, caps_of, fill, igw, make_igw, noop_until, raw_login,
)
from jgharness import send_smtp

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
AUD = "auditor@archive.example"


def esearch(untagged, tag: str) -> list[bytes]:
    """The `* ESEARCH (TAG "tag") ...` responses for a tag, without that prefix."""
    p = re.compile(rb'^\* ESEARCH \(TAG "' + re.escape(tag.encode()) + rb'"\) ?(.*)$', re.I)
    return [m.group(1) for u in untagged if (m := p.match(u))]


def numbers(text: bytes | str) -> list[int]:
    """`1:3,7` -> [1, 2, 3, 7] (ranges ascending, the list order kept)."""
    if isinstance(text, bytes):
        text = text.decode()
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo, hi = int(a), int(b or a)
        out.extend(range(min(lo, hi), max(lo, hi) + 1))
    return out


def updates(untagged, tag: str) -> list[tuple[str, int, int]]:
    """Every (ADDTO|REMOVEFROM, position, number) of a context, in order."""
    out = []
    for line in esearch(untagged, tag):
        for kind, body in re.findall(rb"(ADDTO|REMOVEFROM) \(([^)]*)\)", line):
            words = body.split()
            for pos, nums in zip(words[::2], words[1::2]):
                out.extend((kind.decode(), int(pos), n) for n in numbers(nums))
    return out


def apply(result: list[int], changes, sort: bool) -> list[int]:
    """What a client does with ADDTO/REMOVEFROM (RFC 5267 §4.3.2-4.3.4)."""
    result = list(result)
    for kind, pos, n in changes:
        if kind == "REMOVEFROM":
            if pos == 0:
                result.remove(n)
            else:
                assert result[pos - 1] == n, (result, kind, pos, n)
                del result[pos - 1]
        elif pos == 0:
            assert not sort, "position 0 only for SEARCH"
            result = sorted(result + [n])
        else:
            result.insert(pos - 1, n)
    return result


def deliver(gw, mbx, subject: str, body="text\r\n"):
    assert send_smtp(gw, mbx["address"], build_message(subject=subject, body=body)) == {}


def test_capabilities_and_partial_windows(igw):
    mbx, _ = fill(igw, 7)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        caps = caps_of(c.cmd("CAPABILITY").lines("CAPABILITY")[0])
        assert {"CONTEXT=SEARCH", "CONTEXT=SORT", "ESEARCH", "ESORT"} <= caps, caps
        uids = [int(x) for x in c.cmd("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
        assert len(uids) == 7
        cases = [
            ("SEARCH RETURN (PARTIAL 2:4) ALL", b"PARTIAL (2:4 2:4)"),
            ("SEARCH RETURN (PARTIAL 4:2) ALL", b"PARTIAL (4:2 2:4)"),    # the range as asked
            ("SEARCH RETURN (PARTIAL 6:100 COUNT) ALL", b"COUNT 7 PARTIAL (6:100 6:7)"),
            ("SEARCH RETURN (PARTIAL 8:9) ALL", b"PARTIAL (8:9 NIL)"),
            ("SEARCH RETURN (PARTIAL -1:-2) ALL", b"PARTIAL (-1:-2 6:7)"),
            ("SEARCH RETURN (MIN PARTIAL 1:1) SUBJECT nothing-like-this", b"PARTIAL (1:1 NIL)"),
            ("UID SEARCH RETURN (PARTIAL 1:2) ALL",
             f"UID PARTIAL (1:2 {uids[0]}:{uids[1]})".encode()),
            ("SORT RETURN (PARTIAL 1:3) (REVERSE SUBJECT) UTF-8 ALL", b"PARTIAL (1:3 7,6,5)"),
            ("SEARCH RETURN (CONTEXT COUNT) ALL", b"COUNT 7"),
            ("SEARCH RETURN (UPDATE) ALL", b""),     # only the tag; updates follow
        ]
        for command, want in cases:
            tag = c.next_tag()
            r = c.cmd(command, tag=tag)
            assert r.ok, (command, r)
            assert esearch(r.untagged, tag) == [want], (command, r)
        for bad in ("SEARCH RETURN (PARTIAL 1:2 ALL) ALL", "SEARCH RETURN (PARTIAL 0:3) ALL",
                    "SEARCH RETURN (PARTIAL 1:*) ALL", "SEARCH RETURN (PARTIAL) ALL",
                    "SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL", "SEARCH RETURN (SAVE) ALL"):
            r = c.cmd(bad)
            assert r.status == "BAD", (bad, r)
        c.cmd("LOGOUT")


def test_updating_search_follows_arrivals_flags_and_expunges(igw):
    mbx, _ = fill(igw, 4)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as a, \
            contextlib.closing(raw_login(igw, mbx, select=True)) as b:
        r = a.cmd("SEARCH RETURN (UPDATE COUNT) UNSEEN", tag="S1")
        assert r.ok and esearch(r.untagged, "S1") == [b"COUNT 4"], r
        r = a.cmd("UID SEARCH RETURN (UPDATE ALL) FLAGGED", tag="U1")
        assert r.ok and esearch(r.untagged, "U1") == [b"UID"], r
        seq = [1, 2, 3, 4]
        flagged: list[int] = []
        # this session's own STORE: 2 seen leaves S1, 3 flagged joins U1
        r = a.cmd("STORE 2 +FLAGS (\\Seen)")
        assert r.ok, r
        r2 = a.cmd("UID STORE 1:* +FLAGS (\\Flagged)")
        assert r2.ok, r2
        uids = [int(x) for x in a.cmd("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
        seq = apply(seq, updates(r.untagged + r2.untagged, "S1"), sort=False)
        assert seq == [1, 3, 4], (r, r2)
        flagged = apply(flagged, updates(r.untagged + r2.untagged, "U1"), sort=False)
        assert flagged == uids, (r, r2)
        # another session's change is announced after its FETCH
        assert b.cmd("STORE 4 +FLAGS (\\Seen)").ok
        seen = noop_until(a, lambda u: updates(u, "S1"))
        seq = apply(seq, updates(seen, "S1"), sort=False)
        assert seq == [1, 3], seen
        # a new message: ADDTO after its EXISTS
        deliver(igw, mbx, "arrives later")
        seen = noop_until(a, lambda u: updates(u, "S1"))
        exists_at = next(i for i, u in enumerate(seen) if u.endswith(b" EXISTS"))
        addto_at = next(i for i, u in enumerate(seen) if b"ADDTO" in u)
        assert exists_at < addto_at, seen
        seq = apply(seq, updates(seen, "S1"), sort=False)
        assert seq == [1, 3, 5], seen
        # an expunge through b: REMOVEFROM (by the old numbers) before a's EXPUNGE
        assert b.cmd("STORE 1 +FLAGS (\\Deleted)").ok and b.cmd("EXPUNGE").ok
        seen = noop_until(a, lambda u: any(x.endswith(b" EXPUNGE") for x in u))
        remove_at = next(i for i, u in enumerate(seen) if b"REMOVEFROM" in u)
        expunge_at = next(i for i, u in enumerate(seen) if u.endswith(b" EXPUNGE"))
        assert remove_at < expunge_at, seen
        assert updates(seen, "S1") == [("REMOVEFROM", 0, 1)], seen
        assert ("REMOVEFROM", 0, uids[0]) in updates(seen, "U1"), seen
        # after the expunge the numbers shift: 3 -> 2, 5 -> 4
        r = a.cmd("SEARCH UNSEEN")
        assert [int(x) for x in r.lines("SEARCH")[0].split()[2:]] == [2, 4], r
        # tag reuse is BAD and changes nothing; CANCELUPDATE ends the updates
        r = a.cmd("SEARCH RETURN (UPDATE) ALL", tag="S1")
        assert r.status == "BAD", r
        r = a.cmd('CANCELUPDATE "S1" "U1"')
        assert r.ok, r
        r = a.cmd('CANCELUPDATE "S1"')
        assert r.status == "NO", r
        assert b.cmd("STORE 2 -FLAGS (\\Seen)").ok
        deliver(igw, mbx, "after the cancel")
        seen = noop_until(a, lambda u: any(x.endswith(b" EXISTS") for x in u))
        time.sleep(0.2)
        seen += a.cmd("NOOP").untagged
        assert not esearch(seen, "S1") and not esearch(seen, "U1"), seen
        # the tag is free again
        r = a.cmd("SEARCH RETURN (UPDATE COUNT) ALL", tag="S1")
        assert r.ok and esearch(r.untagged, "S1") == [b"COUNT 5"], r
        for bad in ("CANCELUPDATE", "CANCELUPDATE S1"):
            assert a.cmd(bad).status == "BAD", bad
        b.cmd("LOGOUT")
        a.cmd("LOGOUT")


def test_updating_sort_keeps_positions(igw):
    mbx = igw.create_mailbox()
    for subject in ("delta", "bravo", "foxtrot"):
        deliver(igw, mbx, subject)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as a:
        r = a.cmd("SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNDELETED", tag="O1")
        assert r.ok and esearch(r.untagged, "O1") == [b"ALL 2,1,3"], r
        order = [2, 1, 3]
        for subject in ("alpha", "echo", "golf"):
            deliver(igw, mbx, subject)
        seen = noop_until(a, lambda u: len(apply(order, updates(u, "O1"), sort=True)) == 6)
        order = apply(order, updates(seen, "O1"), sort=True)
        assert order == [4, 2, 1, 5, 3, 6], seen       # alpha bravo delta echo foxtrot golf
        r = a.cmd("STORE 1 +FLAGS (\\Deleted)")        # delta leaves (UNDELETED)
        order = apply(order, updates(r.untagged, "O1"), sort=True)
        assert order == [4, 2, 5, 3, 6], r
        r = a.cmd("SORT (SUBJECT) UTF-8 UNDELETED")
        assert [int(x) for x in r.lines("SORT")[0].split()[2:]] == order, r
        a.cmd("LOGOUT")


def test_archive_folder_announces_new_items(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    first = make_original(subject="context one", sender=ALICE, to=BOB)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=first))
    wait_archived(gw, items=1, users={BOB: {"inbox": 1}})
    c = raw_user(gw, BOB, users[BOB]["password"])
    with contextlib.closing(c):
        assert c.cmd("EXAMINE INBOX").ok
        r = c.cmd("UID SEARCH RETURN (UPDATE ALL) SUBJECT context", tag="A1")
        assert r.ok and len(esearch(r.untagged, "A1")) == 1, r
        result = numbers(esearch(r.untagged, "A1")[0].split()[-1])
        second = make_original(subject="context two", sender=ALICE, to=BOB)
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=second))
        other = make_original(subject="unrelated", sender=ALICE, to=BOB)
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=other))
        seen = noop_until(c, lambda u: updates(u, "A1"), timeout=30)
        result = apply(result, updates(seen, "A1"), sort=False)
        r = c.cmd("UID SEARCH SUBJECT context")
        assert result == [int(x) for x in r.lines("SEARCH")[0].split()[2:]], (seen, r)
        assert len(result) == 2
        c.cmd("LOGOUT")


def test_updating_search_keeps_the_messages_its_numbers_named(igw):
    """RFC 5267 §4.3: sequence numbers in the criteria are those of the command's time."""
    mbx, _ = fill(igw, 3)
    with contextlib.closing(raw_login(igw, mbx, select=True)) as a, \
            contextlib.closing(raw_login(igw, mbx, select=True)) as b:
        uids = [int(x) for x in a.cmd("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
        r = a.cmd("UID SEARCH RETURN (UPDATE ALL) 2:3 UNSEEN", tag="Q1")
        assert esearch(r.untagged, "Q1") == [f"UID ALL {uids[1]}:{uids[2]}".encode()], r
        assert b.cmd("STORE 1 +FLAGS (\\Deleted)").ok and b.cmd("EXPUNGE").ok
        noop_until(a, lambda u: any(x.endswith(b" EXPUNGE") for x in u))
        deliver(igw, mbx, "now number 3")      # 2:3 now would name it: it must not join
        seen = noop_until(a, lambda u: any(x.endswith(b" EXISTS") for x in u))
        assert b.cmd("STORE 1 +FLAGS (\\Seen)").ok     # the message that was number 2
        seen += noop_until(a, lambda u: updates(u, "Q1"))
        assert updates(seen, "Q1") == [("REMOVEFROM", 0, uids[1])], seen
        b.cmd("LOGOUT")
        a.cmd("LOGOUT")
