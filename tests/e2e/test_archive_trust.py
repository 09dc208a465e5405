"""Archive trust (issue 11): the recovery key, grants, and nothing dropped for want of a reader.

Over SMTP and IMAP with a real gateway: after a password reset of the only auditor, a grant
with the recovery key (whole, or rebuilt from Shamir shares) gives every item back byte for
byte; an auditor added later sees the past after a grant by another auditor; catch-all mail
and mail that arrived before any user are kept (sealed to the recovery key) and readable after
a grant; wrong, too few or mixed shares are refused; a grant killed with SIGKILL resumes and
never makes an item readable to anyone but the grantee."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    UNKNOWN, add_user, add_users, archive_gw, archive_stats, check_archive, folder_messages,
    imap_user, journal_report, list_folders, logout, make_igw, make_original, selectable,
    send_report, user_snapshot, wait_archived,
)
from jgharness import BIN

AUD = "auditor@archive.example"
AUD2 = "second.auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"


def recovery_init(gw, tmp: Path, shares=None, threshold=None) -> dict:
    args = ["archive", "recovery", "init", "--out", tmp]
    if shares:
        args += ["--shares", shares, "--threshold", threshold]
    out = gw.cli(*args)
    assert out["public"].startswith("age1") and out["files"], out
    for f in out["files"]:
        text = Path(f).read_text()
        assert "AGE-SECRET-KEY" in text or "share:" in text
        assert oct(Path(f).stat().st_mode & 0o777) == "0o600"
    stored = (gw.data_dir / "archive" / "recovery.json").read_text()
    assert "AGE-SECRET-KEY" not in stored and "share" not in stored.replace('"split"', "")
    return out


def grant(gw, login, *unlock, stdin=None, expect_ok=True):
    cmd = [str(BIN), "--config", str(gw.config_path), "archive", "grant", login, *map(str, unlock),
           "--json"]
    p = subprocess.run(cmd, input=stdin.encode() if stdin else None,
                       stdin=None if stdin else subprocess.DEVNULL, capture_output=True,
                       timeout=300, cwd=gw.base)
    if expect_ok:
        assert p.returncode == 0, f"grant failed: {p.stdout!r} {p.stderr!r}\n{gw.log_tail()}"
        return json.loads(p.stdout)
    return p


def reports(n, to=BOB, tag="item", sender=ALICE):
    out = []
    for i in range(n):
        o = make_original(subject=f"{tag} {i}", sender=sender, to=to,
                          body=f"body {tag} {i} {os.urandom(6).hex()}\r\n")
        out.append((o, journal_report(sender, [to], original=o)))
    return out


def visible(gw, login, password) -> dict:
    c = imap_user(gw, login, password)
    try:
        return {f: sorted(folder_messages(c, f).values()) for f in sorted(selectable(list_folders(c)))}
    finally:
        logout(c)


def test_reset_of_the_only_auditor_then_recovery_grant_restores_every_item(archive_gw, tmp_path):
    gw = archive_gw()
    rec = recovery_init(gw, tmp_path / "keys")
    add_users(gw, ALICE, BOB, auditor=AUD)
    sent = reports(12)
    sent += reports(3, to="stranger@elsewhere.example", tag="catch-all",
                    sender="partner@fabrikam.example")
    for _, r in sent:
        send_report(gw, r)
    wait_archived(gw, items=15, unknown=3)
    before = user_snapshot(gw, AUD)
    # alice's Sent and bob's INBOX show the same 12 items; the catch-all the other 3; and
    # the journal envelopes one per report.
    assert sum(len(m) for _, m in before.values()) == 12 + 12 + 3 + 15

    reset = gw.cli("user", "reset-password", AUD)
    gw.archive_users[AUD]["password"] = reset["password"]
    empty = user_snapshot(gw, AUD)
    assert all(not m for _, m in empty.values()), "a reset key reads nothing before the grant"

    report = grant(gw, AUD, "--recovery", rec["files"][0])
    assert report["granted"] == 15 and report["unreachable"] == 0, report
    after = user_snapshot(gw, AUD)
    assert after == before, "the auditor sees every item again, same UIDs, same bytes"
    again = grant(gw, AUD, "--recovery", rec["files"][0])
    assert (again["granted"], again["already"]) == (0, 15), again
    # Other users are untouched and still read their own mail.
    check_archive(gw, {ALICE: {"Sent": [o for o, _ in sent[:12]]},
                       BOB: {"INBOX": [o for o, _ in sent[:12]]}}, logins=[ALICE, BOB])
    assert archive_stats(gw)["recovery_key"] == rec["public"]


def test_user_history_after_reset_with_shares(archive_gw, tmp_path):
    gw = archive_gw()
    rec = recovery_init(gw, tmp_path / "keys", shares=5, threshold=3)
    assert len(rec["files"]) == 5
    add_users(gw, ALICE, BOB)
    sent = reports(4)
    for _, r in sent:
        send_report(gw, r)
    wait_archived(gw, items=4)
    reset = gw.cli("user", "reset-password", BOB)
    gw.archive_users[BOB]["password"] = reset["password"]
    assert visible(gw, BOB, reset["password"])["INBOX"] == []
    files = rec["files"]
    report = grant(gw, BOB, "--shares", ",".join([files[4], files[1], files[2]]))
    assert (report["entitled"], report["granted"]) == (4, 4), report
    check_archive(gw, {BOB: {"INBOX": [o for o, _ in sent]}}, logins=[BOB])


def test_bad_unlock_material_is_refused(archive_gw, tmp_path):
    gw = archive_gw()
    rec = recovery_init(gw, tmp_path / "keys", shares=3, threshold=2)
    add_users(gw, BOB, auditor=AUD)
    send_report(gw, reports(1)[0][1])
    wait_archived(gw, items=1)
    cases = {
        "too few": (["--shares", rec["files"][0]], b"2 shares are needed"),
        "the same share twice": (["--shares", f"{rec['files'][0]},{rec['files'][0]}"],
                                 b"1 distinct given"),
        "not a key file": (["--recovery", str(gw.config_path)], b"no AGE-SECRET-KEY line"),
        "missing file": (["--recovery", str(tmp_path / "nope.key")], b"nope.key"),
    }
    other = archive_gw()
    other_rec = recovery_init(other, tmp_path / "other", shares=3, threshold=2)
    cases["mixed shares"] = (["--shares", f"{rec['files'][0]},{other_rec['files'][1]}"],
                             b"different recovery keys")
    whole = archive_gw()
    whole_rec = recovery_init(whole, tmp_path / "whole")
    cases["another archive's key"] = (["--recovery", whole_rec["files"][0]],
                                      b"not one of this archive's recovery keys")
    for what, (args, message) in cases.items():
        p = grant(gw, BOB, *args, expect_ok=False)
        assert p.returncode != 0, f"{what}: accepted"
        assert message in p.stderr, (what, p.stderr)
        assert b"AGE-SECRET-KEY-" not in p.stderr + p.stdout, what
    p = grant(gw, BOB, "--by", AUD, stdin="wrong password\n", expect_ok=False)
    assert p.returncode != 0 and b"wrong password" in p.stderr, p.stderr
    p = grant(gw, BOB, "--by", BOB, stdin="x\n", expect_ok=False)
    assert p.returncode != 0 and b"not an auditor" in p.stderr, p.stderr
    assert "AGE-SECRET-KEY" not in gw.log_text()


def test_later_auditor_is_granted_the_past_by_an_existing_auditor(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    sent = reports(5)
    for _, r in sent:
        send_report(gw, r)
    wait_archived(gw, items=5)
    second = add_user(gw, AUD2, auditor=True)
    assert all(not m for m in visible(gw, AUD2, second["password"]).values())
    report = grant(gw, AUD2, "--by", AUD, stdin=gw.archive_users[AUD]["password"] + "\n")
    assert report["granted"] == 5, report
    assert user_snapshot(gw, AUD2) == user_snapshot(gw, AUD)


def test_catch_all_and_pre_user_mail_are_kept_for_a_later_grant(archive_gw, tmp_path):
    gw = archive_gw()
    rec = recovery_init(gw, tmp_path / "keys")
    # No user at all yet: without a recovery key this was not even copied for the archive.
    first = reports(2, to="nobody@contoso.example", tag="before any user",
                    sender="partner@fabrikam.example")
    for _, r in first:
        send_report(gw, r)
    wait_archived(gw, items=2, unknown=2, unreadable_dropped=0)
    add_users(gw, BOB)
    # A user but no auditor: catch-all mail used to be dropped (unreadable_dropped).
    later = reports(1, to="stranger@elsewhere.example", tag="no auditor",
                    sender="partner@fabrikam.example")
    send_report(gw, later[0][1])
    wait_archived(gw, items=3, unknown=3, unreadable_dropped=0)
    aud = add_user(gw, AUD, auditor=True)
    assert visible(gw, AUD, aud["password"]).get(UNKNOWN) == []
    report = grant(gw, AUD, "--recovery", rec["files"][0])
    assert report["granted"] == 3, report
    check_archive(gw, {}, unknown=[o for o, _ in first + later], logins=[AUD])


def test_without_recovery_key_serve_warns(archive_gw):
    gw = archive_gw()
    assert "no recovery key" in gw.log_text()
    assert archive_stats(gw).get("recovery_key") is None
    assert gw.cli("archive", "recovery", "list") == {"keys": []}


def test_rotate_seals_new_items_to_the_new_key(archive_gw, tmp_path):
    gw = archive_gw()
    old = recovery_init(gw, tmp_path / "old")
    add_users(gw, BOB, auditor=AUD)
    send_report(gw, reports(1, tag="old key")[0][1])
    wait_archived(gw, items=1)
    new = gw.cli("archive", "recovery", "rotate", "--out", tmp_path / "new")
    keys = gw.cli("archive", "recovery", "list")["keys"]
    assert [k["public"] for k in keys] == [old["public"], new["public"]]
    send_report(gw, reports(1, tag="new key")[0][1])
    wait_archived(gw, items=2)
    reset = gw.cli("user", "reset-password", AUD)
    gw.archive_users[AUD]["password"] = reset["password"]
    assert grant(gw, AUD, "--recovery", new["files"][0])["granted"] == 1
    r = grant(gw, AUD, "--recovery", old["files"][0])
    assert (r["granted"], r["already"]) == (1, 1), r


def test_alias_added_after_creation_files_new_mail(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB)
    rec = gw.cli("user", "alias", "add", BOB, "Robert@Contoso.example")
    assert rec["aliases"] == ["robert@contoso.example"], rec
    o = make_original(subject="to the alias")
    send_report(gw, journal_report(ALICE, ["robert@contoso.example"], original=o))
    wait_archived(gw, items=1, users={BOB: {"inbox": 1}})
    rc, _, err = gw.cli_raw("user", "alias", "add", ALICE, "robert@contoso.example")
    assert rc != 0 and "already belongs" in err, err
    assert gw.cli("user", "alias", "remove", BOB, "robert@contoso.example")["aliases"] == []
    rc, _, err = gw.cli_raw("user", "alias", "remove", BOB, "robert@contoso.example")
    assert rc != 0
    # Filed in alice's Sent only: the address is no longer bob's.
    send_report(gw, journal_report(ALICE, ["robert@contoso.example"], original=make_original()))
    wait_archived(gw, items=2, users={BOB: {"inbox": 1}, ALICE: {"sent": 2}})


def _spawn_grant(gw, login, key):
    # One durable commit per item: a grant of 700 items takes long enough to be killed
    # part way (with the default batch it is over in a few milliseconds).
    cmd = [str(BIN), "--config", str(gw.config_path), "archive", "grant", login,
           "--recovery", str(key), "--batch", "1", "--json"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=gw.base)


@pytest.mark.slow
def test_grant_killed_with_sigkill_resumes_and_leaks_nothing(archive_gw, tmp_path):
    gw = archive_gw()
    rec = recovery_init(gw, tmp_path / "keys")
    add_users(gw, ALICE, BOB, auditor=AUD)
    carol = add_user(gw, "carol@contoso.example")
    sent = reports(700)
    for _, r in sent:
        send_report(gw, r)
    wait_archived(gw, items=700, timeout=240)
    key = rec["files"][0]
    rng = random.Random(11)
    interrupted = 0
    # Kill the server while it runs the grant, then the offline CLI while it runs one; each
    # round starts from a fresh key (a reset) so there is a whole grant to interrupt.
    for round_ in range(6):
        reset = gw.cli("user", "reset-password", AUD)
        gw.archive_users[AUD]["password"] = reset["password"]
        offline = round_ % 2 == 1
        if offline:
            gw.stop()
        p = _spawn_grant(gw, AUD, key)
        time.sleep(rng.uniform(0.02, 0.25))
        if offline:
            p.send_signal(signal.SIGKILL)
        else:
            gw.kill9()
        p.wait(timeout=60)
        done = p.stdout.read()
        interrupted += b'"granted":700' not in done
        if gw.running:
            gw.stop()
        gw.start()
        assert gw.cli("check")["ok"], gw.log_tail()
    assert interrupted >= 3, f"only {interrupted} of 6 grants were interrupted"
    report = grant(gw, AUD, "--recovery", key)
    assert report["granted"] + report["already"] == 700 and report["unreachable"] == 0, report
    tmp_left = list((gw.data_dir / "archive" / "tmp").iterdir())
    assert tmp_left == [], tmp_left
    items = sorted(o for o, _ in sent)
    seen = visible(gw, AUD, reset["password"])
    assert sorted(seen[f"Users/{BOB}/INBOX"]) == items
    assert sorted(seen[f"Users/{ALICE}/Sent"]) == items
    # Nobody else gained anything: carol still sees nothing, bob exactly his own.
    assert all(not m for m in visible(gw, "carol@contoso.example", carol["password"]).values())
    check_archive(gw, {BOB: {"INBOX": items}}, logins=[BOB])
