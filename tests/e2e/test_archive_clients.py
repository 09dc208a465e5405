"""The per-user archive (issue 4) with real IMAP clients: mbsync (isync) pulling a user's and
an auditor's archive into Maildirs, and neomutt (under tmux) reading a user's INBOX, which it
must treat as read-only."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    ENVELOPES, UNKNOWN, add_users, archive_gw, check_archive, describe, folder_counts, journal_report,
    make_igw, make_original, send_report, user_snapshot, wait_archived,
)
from clientharness import lf, need, start_neomutt
from imapharness import self_signed_cert, served_cert_pem

AUD = "auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"


def contains_message(collected: bytes, msg: bytes) -> bool:
    """A collected file is msg, up to what mbsync itself does to Maildir files: LF line
    endings and its own `X-TUID:` header field."""
    c = re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", lf(collected))
    return c == lf(msg)


def maildir_files(d: Path) -> list[Path]:
    return sorted([*(d / "new").iterdir(), *(d / "cur").iterdir()]) if d.is_dir() else []


def maildirs(root: Path) -> dict[str, Path]:
    """{relative folder name: path} of every Maildir (a dir with cur/new/tmp) under root."""
    out = {}
    for cur in root.rglob("cur"):
        d = cur.parent
        if (d / "new").is_dir() and (d / "tmp").is_dir():
            out[str(d.relative_to(root))] = d
    return out


def setup_archive(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    tag = os.urandom(3).hex()
    o1 = make_original(subject=f"Quarterly numbers {tag}", sender=ALICE, to=BOB,
                       body=f"numbers body {tag}\r\n")
    o2 = make_original(subject=f"Re: Quarterly numbers {tag}", sender=BOB, to=ALICE,
                       cc=CAROL, body=f"reply body {tag}\r\n")
    o3 = make_original(subject=f"From outside {tag}", sender="x@fabrikam.example",
                       to="y@fabrikam.example", body=f"outside body {tag}\r\n")
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o1))
    send_report(gw, journal_report(BOB, [("To", ALICE), ("Cc", CAROL)], original=o2))
    send_report(gw, journal_report("x@fabrikam.example", ["y@fabrikam.example"], original=o3))
    expected = {ALICE: {"Sent": [o1], "INBOX": [o2]}, BOB: {"INBOX": [o1], "Sent": [o2]},
                CAROL: {"INBOX": [o2]}}
    wait_archived(gw, items=3, unknown=1, users=folder_counts(expected))
    return gw, users, expected, [o3]


# ------------------------------------------------------------------ mbsync


def mbsync_rc(gw, tmp: Path, login, password, maildir: Path) -> Path:
    rc = tmp / f"mbsyncrc-{login}"
    rc.write_text(
        "IMAPAccount gw\n"
        "Host 127.0.0.1\n"
        f"Port {gw.imap_port}\n"
        f"User {login}\n"
        f"Pass {password}\n"
        "SSLType STARTTLS\n"
        f"CertificateFile {self_signed_cert(gw)}\n"
        "SystemCertificates no\n"
        "Timeout 60\n\n"
        "IMAPStore far\n"
        "Account gw\n\n"
        "MaildirStore near\n"
        f"Path {maildir}/\n"
        f"Inbox {maildir}/INBOX\n"
        "SubFolders Verbatim\n\n"
        "Channel pull\n"
        "Far :far:\n"
        "Near :near:\n"
        "Patterns *\n"
        "Create Near\n"
        "Sync Pull\n"
        "SyncState *\n"
    )
    rc.chmod(0o600)
    return rc


def run_mbsync(rc: Path, home: Path):
    exe = need("mbsync")
    p = subprocess.run([exe, "-c", str(rc), "-V", "pull"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=str(home)),
                       timeout=120)
    assert p.returncode == 0, f"mbsync exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def expected_view(login, users, expected, unknown, snapshot) -> dict[str, list[bytes]]:
    """What a client must pull: the expected items, and for an auditor the journal
    envelopes exactly as IMAP showed them (`snapshot`)."""
    view = {"INBOX": expected.get(login, {}).get("INBOX", []),
            "Sent": expected.get(login, {}).get("Sent", [])}
    if users[login].get("auditor"):
        for lg in users:
            for f in ("INBOX", "Sent"):
                view[f"Users/{lg}/{f}"] = expected.get(lg, {}).get(f, [])
        view[UNKNOWN] = list(unknown)
        view[ENVELOPES] = list(snapshot[ENVELOPES][1].values())
        assert view[ENVELOPES], "an auditor sees the journal envelopes"
    return view


def check_maildirs(root: Path, view: dict[str, list[bytes]], out: str):
    dirs = maildirs(root)
    assert set(dirs) == set(view), f"maildirs {sorted(dirs)}, expected {sorted(view)}\n{out}"
    for name, want in view.items():
        files = [f.read_bytes() for f in maildir_files(dirs[name])]
        assert len(files) == len(want), \
            f"{name}: {len(files)} files, expected {len(want)} {[describe(w) for w in want]}\n{out}"
        for w in want:
            holders = [f for f in files if contains_message(f, w)]
            assert len(holders) == 1, f"{name}: {describe(w)} in {len(holders)} files\n{out}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("who", ["user", "auditor"])
def test_mbsync_pulls_the_archive(archive_gw, tmp_path, who):
    gw, users, expected, unknown = setup_archive(archive_gw)
    login = BOB if who == "user" else AUD
    before = {lg: user_snapshot(gw, lg) for lg in users}
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    rc = mbsync_rc(gw, tmp_path, login, users[login]["password"], maildir)
    p = run_mbsync(rc, tmp_path)
    view = expected_view(login, users, expected, unknown, before[login])
    check_maildirs(maildir, view, p.stdout + p.stderr)
    # an incremental run fetches nothing new and changes nothing
    p = run_mbsync(rc, tmp_path)
    check_maildirs(maildir, view, p.stdout + p.stderr)
    # local deletions are not pushed (Sync Pull), and the server never changed
    for f in maildir_files(maildir / "INBOX"):
        f.unlink()
    run_mbsync(rc, tmp_path)
    after = {lg: user_snapshot(gw, lg) for lg in users}
    assert after == before, "the archive changed while mbsync pulled it"
    check_archive(gw, expected, unknown=unknown)


# ------------------------------------------------------------------ neomutt under tmux


@pytest.mark.timeout(180)
def test_neomutt_reads_archive_inbox_read_only(archive_gw, tmp_path):
    gw, users, expected, unknown = setup_archive(archive_gw)
    before = {lg: user_snapshot(gw, lg) for lg in users}
    (o1,) = expected[BOB]["INBOX"]
    subject = re.search(rb"^Subject: (.*)$", o1, re.M).group(1).decode().strip()
    body_marker = re.search(rb"numbers body \w+", o1).group(0).decode()
    tm = start_neomutt(tmp_path, f"imaps://127.0.0.1:{gw.imaps_port}/", BOB,
                       users[BOB]["password"], served_cert_pem(gw.imaps_port),
                       extra='set status_format = "STATUS %f %r"\n')
    try:
        accept_cert = tm.accept_cert
        s = tm.wait_for(lambda s: subject in s, "the INBOX index with the subject",
                        on_screen=accept_cert)
        assert "Re: Quarterly" not in s, f"bob's Sent message shown in his INBOX:\n{s}"
        # open it: the original's body, not the journal report
        tm.keys("1", "Enter")
        time.sleep(0.3)
        tm.keys("Enter")
        s = tm.wait_for(lambda s: body_marker in s, "the pager with the original")
        assert "Recipient:" not in s and "journal.report.generator" not in s, s
        tm.keys("q")
        tm.wait_for(lambda s: subject in s and body_marker not in s, "back in the index")
        # deleting is refused by the server (STORE \Deleted -> NO [NOPERM]); the archive
        # keeps the message whatever neomutt tries when it syncs
        tm.keys("d")
        time.sleep(0.3)
        tm.keys("$")
        time.sleep(0.5)
        s = tm.screen()
        if "purge" in s.lower():
            tm.keys("y")
            time.sleep(0.5)
        tm.keys("q")
        time.sleep(0.5)
        if "purge" in tm.screen().lower():
            tm.keys("n")
        s = tm.wait_for(lambda s: "NEOMUTT-EXITED-" in s, "neomutt to exit")
        assert "NEOMUTT-EXITED-0" in s, s
    finally:
        tm.kill()
    after = {lg: user_snapshot(gw, lg) for lg in users}
    assert after == before, "the archive changed while neomutt had it open"
