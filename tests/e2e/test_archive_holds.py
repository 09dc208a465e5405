"""Legal holds and retention rules (issue 11) end to end: reports in over SMTP, `archive
retention --dry-run` says what would go and why, a run removes only what every rule lets go
and no hold keeps; a hold survives retention and the deletion of its user, auditors read it
as `Holds/<name>` over IMAP (imaplib and mbsync), and a released hold's items go."""

from __future__ import annotations

import imaplib

import pytest

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    add_user, add_users, archive_gw, archive_stats, folder_messages, imap_user, journal_report,
    list_folders, logout, make_igw, make_original, selectable, send_report, wait_archived,
)
from test_archive_clients import contains_message, maildir_files, maildirs, mbsync_rc, run_mbsync

AUD = "auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
EXT = "partner@fabrikam.example"


def incoming(to, n, tag):
    """n reports from an outside sender to `to` (filed only in to's INBOX)."""
    out = []
    for i in range(n):
        o = make_original(subject=f"{tag} {i}", sender=EXT, to=to, body=f"{tag} {i}\r\n")
        out.append((o, journal_report(EXT, [to], original=o)))
    return out


def auditor_view(gw):
    c = imap_user(gw, AUD, gw.archive_users[AUD]["password"])
    try:
        return {f: sorted(folder_messages(c, f).values()) for f in sorted(selectable(list_folders(c)))}
    finally:
        logout(c)


def rules_gw(archive_gw, rules, start=True):
    return archive_gw(archive={"retention": rules}, start=start)


def test_retention_rules_dry_run_and_run(archive_gw):
    # Everything may go at once, but bob's INBOX is kept at least 10 years and carol's Sent
    # has no deletion at all.
    gw = rules_gw(archive_gw, [
        {"delete_after_days": 0},
        {"user": BOB, "folder": "INBOX", "keep_years": 10},
        {"user": CAROL, "folder": "Sent"},
    ])
    add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    to_bob = incoming(BOB, 2, "for bob")
    to_alice = incoming(ALICE, 3, "for alice")
    o = make_original(subject="carol to alice", sender=CAROL, to=ALICE)
    send_report(gw, journal_report(CAROL, [ALICE], original=o))
    for _, r in to_bob + to_alice:
        send_report(gw, r)
    wait_archived(gw, items=6)
    dry = gw.cli("archive", "retention", "--dry-run")
    assert dry["dry_run"] and dry["removed"] == 0
    assert len(dry["plan"]["remove"]) == 3, dry
    for d in dry["plan"]["remove"]:
        assert any(f"{ALICE}/INBOX: rule 1" in b for b in d["because"]), d
    assert archive_stats(gw)["items"] == 6, "a dry run removes nothing"
    run = gw.cli("archive", "retention")
    assert run["removed"] == 3
    view = auditor_view(gw)
    assert view[f"Users/{ALICE}/INBOX"] == [o], "carol's Sent (no deletion rule) keeps it"
    assert view[f"Users/{BOB}/INBOX"] == sorted(m for m, _ in to_bob)
    assert archive_stats(gw)["retention_removed"] == 3


def test_bad_retention_rule_is_refused_at_start(archive_gw):
    gw = rules_gw(archive_gw, [{"keep_years": 7, "delete_after_days": 30}], start=False)
    rc, _, err = gw.cli_raw("archive", "retention", "--dry-run")
    assert rc != 0 and "shorter than the minimum" in err, err
    gw2 = rules_gw(archive_gw, [{"folder": "Drafts", "delete_after_days": 1}], start=False)
    rc, _, err = gw2.cli_raw("archive", "stats")
    assert rc != 0 and "INBOX, Sent or Unknown" in err, err


def test_hold_survives_retention_and_user_deletion(archive_gw, tmp_path):
    gw = rules_gw(archive_gw, [{"delete_after_days": 0}])
    add_users(gw, BOB, CAROL, auditor=AUD)
    to_bob = incoming(BOB, 3, "held")
    to_carol = incoming(CAROL, 2, "not held")
    for _, r in to_bob + to_carol:
        send_report(gw, r)
    wait_archived(gw, items=5)
    hold = gw.cli("hold", "add", "case-4711", "--user", BOB, "--from", "2000-01-01")
    assert hold["name"] == "case-4711" and hold["users"][0]["login"] == BOB, hold
    assert [h["name"] for h in gw.cli("hold", "list")["holds"]] == ["case-4711"]
    rc, _, err = gw.cli_raw("hold", "add", "case-4711", "--all")
    assert rc != 0 and "exists" in err
    for bad in ["../x", "a b", ""]:
        rc, _, err = gw.cli_raw("hold", "add", bad, "--all")
        assert rc != 0, bad
    held_items = sorted(m for m, _ in to_bob)
    assert auditor_view(gw)["Holds/case-4711"] == held_items

    dry = gw.cli("archive", "retention", "--dry-run")
    assert len(dry["plan"]["remove"]) == 2 and len(dry["plan"]["held"]) == 3, dry
    assert all(h[1] == ["case-4711"] for h in dry["plan"]["held"])
    assert gw.cli("archive", "retention")["removed"] == 2

    gw.cli("user", "delete", BOB)
    del gw.archive_users[BOB]
    assert gw.cli("archive", "retention")["removed"] == 0
    view = auditor_view(gw)
    assert view["Holds/case-4711"] == held_items, "the deleted user's held items stay readable"
    assert view[f"Users/{CAROL}/INBOX"] == []

    # mbsync pulls the hold folder like any other.
    maildir = tmp_path / "mail"
    maildir.mkdir()
    rc_file = mbsync_rc(gw, tmp_path, AUD, gw.archive_users[AUD]["password"], maildir)
    out = run_mbsync(rc_file, tmp_path)
    dirs = maildirs(maildir)
    assert "Holds/case-4711" in dirs, (sorted(dirs), out.stdout)
    files = [f.read_bytes() for f in maildir_files(dirs["Holds/case-4711"])]
    assert len(files) == 3 and all(any(contains_message(f, w) for f in files) for w in held_items)

    # The hold folder is read-only: SELECT answers READ-ONLY (imaplib raises on that).
    c = imap_user(gw, AUD, gw.archive_users[AUD]["password"])
    try:
        with pytest.raises(imaplib.IMAP4.readonly):
            c.select('"Holds/case-4711"')
    finally:
        logout(c)

    released = gw.cli("hold", "release", "case-4711")
    assert released["name"] == "case-4711"
    assert "Holds/case-4711" not in auditor_view(gw)
    assert gw.cli("archive", "retention")["removed"] == 3


def test_hold_on_all_with_dates(archive_gw):
    gw = rules_gw(archive_gw, [{"delete_after_days": 0}])
    add_users(gw, BOB, auditor=AUD)
    for _, r in incoming(BOB, 2, "x") + incoming("nobody@elsewhere.example", 1, "catch-all"):
        send_report(gw, r)
    wait_archived(gw, items=3)
    gw.cli("hold", "add", "old-only", "--all", "--to", "2001-12-31")
    gw.cli("hold", "add", "everything", "--all")
    view = auditor_view(gw)
    assert view["Holds/old-only"] == [] and len(view["Holds/everything"]) == 3
    assert gw.cli("archive", "retention")["removed"] == 0
    gw.cli("hold", "release", "everything")
    assert gw.cli("archive", "retention")["removed"] == 3
