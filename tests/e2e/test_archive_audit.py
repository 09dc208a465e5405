"""The audit trail (issue 11): every archive login (success or failure), folder opened,
message body fetched, grant, hold, export, retention run and admin action, as hash-chained
JSON lines; `audit export` as CSV or JSON; `audit verify` finds changed and cut-off lines.
Nothing in it is message content or a password."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    add_users, archive_gw, imap_user, journal_report, logout, make_igw, make_original,
    send_report, wait_archived,
)
from jgharness import BIN

AUD = "auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
SECRET_SUBJECT = "merger with fabrikam"
SECRET_BODY = "the price is 42 million"


def cli(gw, *args, stdin=None):
    cmd = [str(BIN), "--config", str(gw.config_path), *map(str, args)]
    return subprocess.run(cmd, input=stdin.encode() if stdin else None,
                          stdin=None if stdin else subprocess.DEVNULL, capture_output=True,
                          timeout=120, cwd=gw.base)


def audit_lines(gw, *extra) -> list[dict]:
    p = cli(gw, "audit", "export", "--format", "json", *extra)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def wait_for(gw, predicate, timeout=10.0):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = audit_lines(gw)
        if predicate(lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"audit trail never matched: {json.dumps(audit_lines(gw), indent=1)}")


def test_access_and_admin_actions_are_recorded_without_content_or_passwords(archive_gw,
                                                                             tmp_path):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    key = Path(gw.cli("archive", "recovery", "init", "--out", tmp_path / "keys")["files"][0])
    o = make_original(subject=SECRET_SUBJECT, sender=ALICE, to=BOB, body=SECRET_BODY + "\r\n")
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o))
    wait_archived(gw, items=1)

    c = imap_user(gw, BOB, users[BOB]["password"])
    try:
        c.select("INBOX", readonly=True)
        c.uid("FETCH", "1", "(BODY.PEEK[HEADER])")  # headers only: not a body fetch
        c.uid("FETCH", "1", "(BODY.PEEK[])")
    finally:
        logout(c)
    for login, password in ((BOB, "wrong-password-1"), ("nobody@contoso.example", "hunter2x")):
        try:
            imap_user(gw, login, password)
        except Exception:  # noqa: BLE001 (imaplib raises on NO)
            pass
    gw.cli("hold", "add", "case-9", "--user", BOB)
    gw.cli("hold", "release", "case-9")
    assert cli(gw, "archive", "export", "--user", BOB, "--out", tmp_path / "x.zip",
               "--recovery", key).returncode == 0
    assert cli(gw, "archive", "retention", "--dry-run", "--json").returncode == 0
    gw.cli("user", "reset-password", ALICE)
    assert cli(gw, "archive", "grant", ALICE, "--recovery", key, "--json").returncode == 0

    lines = wait_for(gw, lambda ls: any(e["action"] == "archive.fetch" for e in ls))
    actions = [(e["action"], e["result"], e.get("target")) for e in lines]
    assert ("archive.login", "ok", BOB) in actions, actions
    assert ("archive.login", "failed", BOB) in actions
    assert ("archive.login", "failed", "(unknown)") in actions
    assert ("archive.select", "ok", "INBOX") in actions
    fetches = [e for e in lines if e["action"] == "archive.fetch"]
    assert len(fetches) == 1 and fetches[0]["detail"]["items"] == [1], fetches
    assert fetches[0]["actor"] == f"imap:{BOB}" and fetches[0]["client"] == "127.0.0.1"
    for action in ("user.add", "recovery.init", "hold.add", "hold.release", "archive.export",
                   "archive.retention", "user.reset-password", "archive.grant"):
        assert any(a == action for a, _, _ in actions), (action, actions)
    export = next(e for e in lines if e["action"] == "archive.export")
    assert export["target"] == f"user {BOB}" and export["detail"]["unlock"] == "recovery key"
    assert export["actor"].startswith("cli:")
    # Sequence numbers and chain links are there; the content and the passwords are not.
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    raw = b"".join(p.read_bytes() for p in (gw.data_dir / "audit").iterdir())
    for secret in (SECRET_SUBJECT, SECRET_BODY, "wrong-password-1", "hunter2x",
                   "nobody@contoso.example", users[BOB]["password"], key.read_text().strip()):
        assert secret.encode() not in raw, secret


def test_csv_export_time_range_and_verify_against_a_hand_cut_log(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, auditor=AUD)
    for _ in range(3):
        c = imap_user(gw, ALICE, users[ALICE]["password"])
        logout(c)
    wait_for(gw, lambda ls: sum(e["action"] == "archive.login" for e in ls) == 3)
    p = cli(gw, "audit", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(p.stdout.decode())))
    assert [r["action"] for r in rows].count("archive.login") == 3, rows
    assert all(r["time"] and r["actor"] for r in rows)
    assert audit_lines(gw, "--from", "2001-01-01", "--to", "2001-12-31") == []

    ok = cli(gw, "audit", "verify", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"], ok.stdout
    gw.stop()
    log = sorted((gw.data_dir / "audit").glob("*.jsonl"))[-1]
    text = log.read_text()
    lines = text.splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))  # cut the last two lines by hand
    cut = cli(gw, "audit", "verify", "--json")
    report = json.loads(cut.stdout)
    assert cut.returncode == 1 and not report["ok"] and "cut short" in report["problems"][0], \
        report
    log.write_text(text.replace('"archive.login"', '"archive.logout"', 1))
    changed = cli(gw, "audit", "verify", "--json")
    assert changed.returncode == 1 and "changed" in " ".join(json.loads(changed.stdout)["problems"])
    log.write_text(text)
    assert cli(gw, "audit", "verify").returncode == 0
