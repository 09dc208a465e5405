"""Operating the per-user archive end to end: `journalgate check` over the archive items
(running server and offline), IDLE on an archive folder, the per-user IMAP session limit,
login rules (wrong password, aliases), and what users and auditors see after `user add
--auditor`, `user reset-password` and `user delete` (README "Archive", "Command line")."""

from __future__ import annotations

import contextlib
import imaplib
import json
from pathlib import Path
import re
import time

import pytest

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    ENVELOPES, UNKNOWN, add_user, add_users, archive_gw, describe, folder_messages, imap_user,
    journal_report, list_folders, logout, make_igw, make_original, raw_user, selectable,
    send_report, wait_archived,
)
from imapharness import RawIMAP, imaplib_connect, quote
from jgharness import auth_plain_b64

AUD = "auditor@archive.example"
AUD2 = "late.auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
OUT1 = "x@fabrikam.example"
OUT2 = "y@fabrikam.example"


# --------------------------------------------------------------------------- helpers


def starttls_conn(gw) -> RawIMAP:
    c = RawIMAP(gw.imap_port)
    assert c.greeting.startswith(b"* OK"), c.greeting
    c.starttls()
    return c


def try_login(gw, login, password):
    """A LOGIN on a fresh STARTTLS connection -> (connection, Resp); never asserts OK."""
    c = starttls_conn(gw)
    return c, c.cmd(f"LOGIN {quote(login)} {quote(password)}")


def close_quietly(c: RawIMAP):
    with contextlib.suppress(Exception):
        c.cmd("LOGOUT")
    c.close()


def contents(gw, login, password, folders=None) -> dict[str, list[bytes]]:
    """{folder: [bytes]} of every selectable folder (or of `folders`) of one user."""
    c = imap_user(gw, login, password)
    try:
        names = folders if folders is not None else sorted(selectable(list_folders(c)))
        return {f: sorted(folder_messages(c, f).values()) for f in names}
    finally:
        logout(c)


def list_folders_of(gw, login, password) -> dict[str, set[str]]:
    c = imap_user(gw, login, password)
    try:
        return list_folders(c)
    finally:
        logout(c)


def same(got: list[bytes], want: list[bytes]) -> bool:
    return sorted(got) == sorted(want)


def show(msgs: list[bytes]) -> list[str]:
    return [describe(m) for m in msgs]


def check_json(gw) -> tuple[int, dict, str]:
    rc, out, err = gw.cli_raw("check")
    try:
        res = json.loads(out)
    except ValueError:
        raise AssertionError(f"check --json: stdout is not JSON (rc {rc}): {out!r}\n"
                             f"stderr: {err}\n{gw.log_tail()}") from None
    return rc, res, err


def names_item(problem: str, item_id: str) -> bool:
    """The problem text names archive item `item_id` (its number right after the words)."""
    return re.search(rf"archive item\D{{0,20}}\b{re.escape(item_id)}\b", problem) is not None


def item_at(gw, item: int) -> tuple[Path, int, int]:
    """(file, offset, length) of an item's sealed bytes, from `archive item`."""
    info = gw.cli("archive", "item", item)
    return Path(info["file"]), info["offset"], info["length"]


def damage_header(gw, item: int):
    """Overwrites the start of an item's age header in its pack."""
    path, offset, _ = item_at(gw, item)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 16)


# =========================================================================== check


def test_check_covers_archive_items_running_and_offline(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    origs = [make_original(subject=f"check me {i}") for i in range(3)]
    for o in origs:
        send_report(gw, journal_report(ALICE, [BOB], original=o))
    wait_archived(gw, items=3, users={ALICE: {"sent": 3}, BOB: {"inbox": 3}})

    # Three originals and the journal envelope of each (sealed to the auditor), in one pack.
    packs = list((gw.data_dir / "archive" / "items").glob("*.pack"))
    assert len(packs) == 1, packs
    assert item_at(gw, 6)[0] == packs[0]

    # healthy: through the admin socket, then offline
    rc, res, err = check_json(gw)
    assert rc == 0 and res.get("ok") is True and res.get("problems") == [], \
        f"check (running) on a healthy archive: rc {rc} {res} {err}\n{gw.log_tail()}"
    assert gw.stop() == 0, gw.log_tail()
    rc, res, err = check_json(gw)
    assert rc == 0 and res.get("ok") is True and res.get("problems") == [], \
        f"check (offline) on a healthy archive: rc {rc} {res} {err}\n{gw.log_tail()}"
    gw.start()

    # one item's header overwritten in its pack: the running server's check finds it
    victim_id = "3"
    damage_header(gw, 3)
    rc, res, err = check_json(gw)
    assert rc == 1 and res.get("ok") is False, \
        f"check (running) after damaging item 3: rc {rc} {res} {err}\n{gw.log_tail()}"
    probs = res.get("problems") or []
    assert len(probs) == 1 and names_item(probs[0], victim_id), \
        f"check (running) problems {probs}, expected one naming archive item {victim_id}\n" \
        f"{gw.log_tail()}"

    # the same offline (no admin socket)
    assert gw.stop() == 0, gw.log_tail()
    rc, res, err = check_json(gw)
    assert rc == 1 and res.get("ok") is False, \
        f"check (offline) after damaging item 3: rc {rc} {res} {err}\n{gw.log_tail()}"
    probs = res.get("problems") or []
    assert len(probs) == 1 and names_item(probs[0], victim_id), \
        f"check (offline) problems {probs}, expected one naming archive item {victim_id}\n" \
        f"{gw.log_tail()}"

    # a second damaged item is a second problem (offline, then running)
    gone_id = "5"
    damage_header(gw, 5)
    for phase in ("offline", "running"):
        if phase == "running":
            gw.start()
        rc, res, err = check_json(gw)
        probs = res.get("problems") or []
        assert rc == 1 and res.get("ok") is False and len(probs) == 2, \
            f"check ({phase}) with two damaged items: rc {rc} {res} {err}\n" \
            f"{gw.log_tail()}"
        for want in (victim_id, gone_id):
            assert any(names_item(p, want) for p in probs), \
                f"check ({phase}): no problem names archive item {want}: {probs}\n" \
                f"{gw.log_tail()}"
    # plain-text output (no --json) lists the same
    rc, out, err = gw.cli_raw("check", json_flag=False)
    assert rc == 1 and "DAMAGE FOUND" in out and out.count("archive item") == 2, \
        f"check (text): rc {rc} {out!r} {err!r}\n{gw.log_tail()}"


# =========================================================================== IDLE


def test_idle_on_archive_inbox_sees_new_item(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="already there", sender=ALICE, to=BOB)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o1))
    wait_archived(gw, items=1, users={BOB: {"inbox": 1}})

    c = raw_user(gw, BOB, users[BOB]["password"])
    try:
        r = c.cmd("SELECT INBOX")
        # READ-WRITE: each user keeps their own flags; nothing can be deleted
        assert r.ok and r.code == "READ-WRITE" and r.exists() == [1], \
            f"SELECT INBOX: {r}\n{gw.log_tail()}"
        tag = c.next_tag()
        c.send(f"{tag} IDLE\r\n")
        got = c.read_until(lambda x: x.startswith(b"+"), timeout=10)
        assert got[-1].startswith(b"+"), got

        o2 = make_original(subject="arrives during IDLE", sender=ALICE, to=BOB)
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=o2))
        t0 = time.monotonic()
        try:
            got = c.read_until(lambda x: re.match(rb"^\* \d+ EXISTS$", x) is not None,
                               timeout=10)
        except AssertionError as e:
            raise AssertionError(f"IDLE: no EXISTS within 10 s of the 250: {e}\n"
                                 f"{gw.log_tail()}") from None
        took = time.monotonic() - t0
        assert got[-1] == b"* 2 EXISTS", f"IDLE got {got}\n{gw.log_tail()}"
        assert not any(re.match(rb"^\* \d+ EXPUNGE$", x) for x in got), got
        c.send("DONE\r\n")
        r = c.wait(tag)
        assert r.ok, f"IDLE/DONE: {r}\n{gw.log_tail()}"

        r = c.cmd("FETCH 2 (UID BODY.PEEK[])")
        assert r.ok, r
        f = dict(r.fetches())
        assert set(f) == {2}, r
        assert f[2]["BODY[]"] == o2, \
            f"FETCH 2 after IDLE: {describe(f[2]['BODY[]'])}, expected {describe(o2)}\n" \
            f"{gw.log_tail()}"
        r = c.cmd("FETCH 1 (UID BODY.PEEK[])")
        assert r.ok and dict(r.fetches())[1]["BODY[]"] == o1, r
        assert int(f[2]["UID"]) > int(dict(r.fetches())[1]["UID"]), (f[2]["UID"], r)
        r = c.cmd("LOGOUT")
        assert r.ok, r
    finally:
        c.close()
    assert took < 10, took


# =========================================================================== session limit


def test_per_user_session_limit(archive_gw):
    gw = archive_gw(imap={"max_sessions_per_mailbox": 2})
    users = add_users(gw, BOB, CAROL)
    pw = users[BOB]["password"]
    conns = []
    try:
        for i in range(2):
            c, r = try_login(gw, BOB, pw)
            conns.append(c)
            assert r.ok, f"login {i + 1} of {BOB}: {r}\n{gw.log_tail()}"
        third, r = try_login(gw, BOB, pw)
        conns.append(third)
        assert r.status == "NO" and r.code == "LIMIT", \
            f"third login of {BOB} with max_sessions_per_mailbox = 2: {r}\n{gw.log_tail()}"
        # the limit is per user: another user still logs in
        other, r = try_login(gw, CAROL, users[CAROL]["password"])
        conns.append(other)
        assert r.ok, f"{CAROL} while {BOB} has 2 sessions: {r}\n{gw.log_tail()}"
        # the two sessions still work
        for c in conns[:2]:
            r = c.cmd("EXAMINE INBOX")
            assert r.ok and r.code == "READ-ONLY", r

        # log one session out; then a new login is accepted
        first = conns.pop(0)
        r = first.cmd("LOGOUT")
        assert r.ok and r.lines("BYE"), r
        assert first.closed_by_server(10), "server did not close after LOGOUT"
        first.close()
        deadline = time.monotonic() + 5
        while True:
            c, r = try_login(gw, BOB, pw)
            conns.append(c)
            if r.ok or r.code != "LIMIT" or time.monotonic() > deadline:
                break
            c.close()
            conns.pop()
            time.sleep(0.1)
        assert r.ok, f"login of {BOB} after one of two sessions logged out: {r}\n" \
                     f"{gw.log_tail()}"
        r = conns[-1].cmd("SELECT INBOX")
        assert r.ok, r
        # and the limit holds again: still two sessions
        extra, r = try_login(gw, BOB, pw)
        conns.append(extra)
        assert r.status == "NO" and r.code == "LIMIT", \
            f"another login with 2 sessions open again: {r}\n{gw.log_tail()}"
    finally:
        for c in conns:
            close_quietly(c)


# =========================================================================== logins


def test_wrong_password_and_alias_login_refused(archive_gw):
    gw = archive_gw()
    u = add_user(gw, ALICE, aliases=["a.smith@contoso.example"])
    other = add_user(gw, BOB)
    pw = u["password"]
    cases = [
        ("wrong password", ALICE, "not-the-password"),
        ("another user's password", ALICE, other["password"]),
        ("alias address, right password", "a.smith@contoso.example", pw),
        ("alias address, upper case", "A.Smith@Contoso.Example", pw),
    ]
    for what, login, password in cases:
        c, r = try_login(gw, login, password)
        try:
            assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", \
                f"{what}: LOGIN {login} -> {r}\n{gw.log_tail()}"
            # still not authenticated
            r = c.cmd("SELECT INBOX")
            assert r.status in ("NO", "BAD"), f"{what}: SELECT after a failed login: {r}"
        finally:
            close_quietly(c)
    # AUTHENTICATE PLAIN with the alias is refused too
    c = starttls_conn(gw)
    try:
        r = c.cmd(f"AUTHENTICATE PLAIN {auth_plain_b64('a.smith@contoso.example', pw)}")
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", \
            f"AUTHENTICATE PLAIN with the alias: {r}\n{gw.log_tail()}"
    finally:
        close_quietly(c)
    # the primary address with the right password works (after all those failures)
    c, r = try_login(gw, ALICE, pw)
    try:
        assert r.ok, f"LOGIN {ALICE} with its password: {r}\n{gw.log_tail()}"
    finally:
        close_quietly(c)
    c = imaplib_connect(gw, "starttls")
    try:
        with pytest.raises(imaplib.IMAP4.error) as ei:
            c.login("a.smith@contoso.example", pw)
        assert "AUTHENTICATIONFAILED" in str(ei.value), ei.value
    finally:
        logout(c)


# =========================================================================== auditors


def test_auditor_added_later_sees_only_later_items(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    old = make_original(subject="before the second auditor", sender=ALICE, to=BOB)
    old_unknown = make_original(subject="strangers before", sender=OUT1, to=OUT2)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=old))
    send_report(gw, journal_report(OUT1, [OUT2], original=old_unknown))
    wait_archived(gw, items=2, unknown=1, users={ALICE: {"sent": 1}, BOB: {"inbox": 1}})

    late = add_user(gw, AUD2, auditor=True)
    users[AUD2] = late
    new = make_original(subject="after the second auditor", sender=ALICE, to=BOB)
    new_unknown = make_original(subject="strangers after", sender=OUT1, to=OUT2)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=new))
    send_report(gw, journal_report(OUT1, [OUT2], original=new_unknown))
    wait_archived(gw, items=4, unknown=2, users={ALICE: {"sent": 2}, BOB: {"inbox": 2}})

    want_folders = {"INBOX", "Sent", UNKNOWN, ENVELOPES} | {
        f"Users/{lg}/{f}" for lg in (ALICE, BOB, AUD, AUD2) for f in ("INBOX", "Sent")}
    envelopes = {AUD: 4, AUD2: 2}  # one per report; the later auditor only the later ones
    expectations = {
        AUD: {f"Users/{BOB}/INBOX": [old, new], f"Users/{ALICE}/Sent": [old, new],
              UNKNOWN: [old_unknown, new_unknown]},
        AUD2: {f"Users/{BOB}/INBOX": [new], f"Users/{ALICE}/Sent": [new],
               UNKNOWN: [new_unknown]},
    }
    problems = []
    for login, want in expectations.items():
        c = imap_user(gw, login, users[login]["password"])
        try:
            sel = selectable(list_folders(c))
            if sel != want_folders:
                problems.append(f"{login}: folders {sorted(sel)}, expected {sorted(want_folders)}")
            for f in sorted(sel & want_folders):
                got = list(folder_messages(c, f).values())
                if f == ENVELOPES:
                    if len(got) != envelopes[login]:
                        problems.append(f"{login}: {len(got)} envelopes, expected {envelopes[login]}")
                    continue
                w = want.get(f, [])
                if not same(got, w):
                    problems.append(f"{login} {f!r}: {show(got)}, expected {show(w)}")
        finally:
            logout(c)
    # the users themselves see both
    for login, folder in ((ALICE, "Sent"), (BOB, "INBOX")):
        got = contents(gw, login, users[login]["password"], [folder])[folder]
        if not same(got, [old, new]):
            problems.append(f"{login} {folder}: {show(got)}, expected {show([old, new])}")
    assert not problems, "archive content differs:\n  " + "\n  ".join(problems) + "\n" + \
        gw.log_tail()


# =========================================================================== reset-password


def test_reset_password_hides_older_items_from_user_not_auditor(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    o_in = make_original(subject="to bob before the reset", sender=ALICE, to=BOB)
    o_out = make_original(subject="from bob before the reset", sender=BOB, to=ALICE)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o_in))
    send_report(gw, journal_report(BOB, [("To", ALICE)], original=o_out))
    wait_archived(gw, items=2, users={ALICE: {"sent": 1, "inbox": 1},
                                      BOB: {"inbox": 1, "sent": 1}})
    before = contents(gw, BOB, users[BOB]["password"])
    assert before == {"INBOX": [o_in], "Sent": [o_out]}, \
        f"bob before the reset: { {k: show(v) for k, v in before.items()} }\n{gw.log_tail()}"

    old_pw = users[BOB]["password"]
    r = gw.cli("user", "reset-password", BOB)
    new_pw = r.get("password")
    assert r.get("login") == BOB and isinstance(new_pw, str) and len(new_pw) >= 16 \
        and new_pw != old_pw, r
    c, resp = try_login(gw, BOB, old_pw)
    try:
        assert resp.status == "NO" and resp.code == "AUTHENTICATIONFAILED", \
            f"old password after reset-password: {resp}\n{gw.log_tail()}"
    finally:
        close_quietly(c)
    users[BOB]["password"] = new_pw

    o_new = make_original(subject="to bob after the reset", sender=ALICE, to=BOB)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o_new))
    wait_archived(gw, items=3, users={ALICE: {"sent": 2}})

    problems = []
    got = contents(gw, BOB, new_pw)
    want = {"INBOX": [o_new], "Sent": []}
    if got != {k: sorted(v) for k, v in want.items()}:
        problems.append(f"bob (new password): { {k: show(v) for k, v in got.items()} }, "
                        f"expected { {k: show(v) for k, v in want.items()} } (README: mail "
                        f"archived before the reset is not listed)")
    got = contents(gw, AUD, users[AUD]["password"],
                   [f"Users/{BOB}/INBOX", f"Users/{BOB}/Sent"])
    want = {f"Users/{BOB}/INBOX": [o_in, o_new], f"Users/{BOB}/Sent": [o_out]}
    for f, w in want.items():
        if not same(got[f], w):
            problems.append(f"auditor {f}: {show(got[f])}, expected {show(w)}")
    got = contents(gw, ALICE, users[ALICE]["password"])
    want = {"INBOX": [o_out], "Sent": [o_in, o_new]}
    for f, w in want.items():
        if not same(got.get(f, []), w):
            problems.append(f"alice {f}: {show(got.get(f, []))}, expected {show(w)}")
    assert not problems, "after reset-password:\n  " + "\n  ".join(problems) + "\n" + \
        gw.log_tail()


# =========================================================================== user delete


def test_user_delete_refuses_login_and_hides_folders(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="to bob, who will be deleted", sender=ALICE, to=BOB)
    o2 = make_original(subject="from bob", sender=BOB, to=ALICE)
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o1))
    send_report(gw, journal_report(BOB, [("To", ALICE)], original=o2))
    wait_archived(gw, items=2, users={BOB: {"inbox": 1, "sent": 1}})
    aud_pw = users[AUD]["password"]
    folders = selectable(list_folders_of(gw, AUD, aud_pw))
    assert {f"Users/{BOB}/INBOX", f"Users/{BOB}/Sent"} <= folders, folders

    gw.cli("user", "delete", BOB)
    assert BOB not in {u["login"] for u in gw.cli("user", "list")["users"]}

    c, r = try_login(gw, BOB, users[BOB]["password"])
    try:
        assert r.status == "NO" and r.code == "AUTHENTICATIONFAILED", \
            f"login of the deleted user {BOB}: {r}\n{gw.log_tail()}"
    finally:
        close_quietly(c)

    c = raw_user(gw, AUD, aud_pw)
    try:
        r = c.cmd('LIST "" "*"')
        assert r.ok, r
        listing = b"\n".join(r.lines("LIST"))
        assert BOB.encode() not in listing.lower(), \
            f"auditor still lists the deleted user's folders: {listing!r}\n{gw.log_tail()}"
        assert f"Users/{ALICE}/INBOX".encode() in listing, listing
        for f in (f"Users/{BOB}/INBOX", f"Users/{BOB}/Sent"):
            r = c.cmd(f"EXAMINE {quote(f)}")
            assert r.status == "NO" and not r.exists(), \
                f"auditor: EXAMINE {f} after user delete: {r}\n{gw.log_tail()}"
        c.cmd("LOGOUT")
    finally:
        c.close()
    # the other participant keeps what she has
    got = contents(gw, ALICE, users[ALICE]["password"])
    assert got == {"INBOX": [o2], "Sent": [o1]}, \
        f"alice after bob's deletion: { {k: show(v) for k, v in got.items()} }\n{gw.log_tail()}"
