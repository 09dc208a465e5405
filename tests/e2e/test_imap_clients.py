"""IMAP server (issue 3) with real clients: Python imaplib and imapclient, curl, mbsync,
offlineimap, getmail6, fetchmail and neomutt (under tmux)."""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import os
import re
import ssl
import subprocess
import time

import pytest

from imapharness import (  # noqa: F401  (igw, make_igw are fixtures)
    build_message, fetch_bodies, fill, igw, imaplib_connect, imaplib_login, make_igw,
    message_count, raw_login, self_signed_cert, served_cert_pem, uid_map,
)
from clientharness import lf, need, start_neomutt
from jgharness import fetchmail_rc, run_getmail, send_smtp, strip_received, unverified_ctx


def contains_message(collected: bytes, msg: bytes) -> bool:
    """True when a collected file holds msg: the same body, and every header line of msg in
    the same order (clients add their own header fields, e.g. mbsync's X-TUID, getmail's
    X-getmail-retrieved-from-mailbox, and the gateway adds Received:). LF-normalised."""
    ch, _, cb = lf(collected).partition(b"\n\n")
    mh, _, mb = lf(msg).partition(b"\n\n")
    if cb != mb:
        return False
    it = iter(ch.split(b"\n"))
    return all(any(line == x for x in it) for line in mh.split(b"\n"))


def holders(contents: list[bytes], msgs) -> None:
    """Every sent message is contained in exactly one of contents."""
    for marker, msg in msgs:
        h = [c for c in contents if contains_message(c, msg)]
        assert len(h) == 1, f"{marker}: in {len(h)} of {len(contents)} collected files"


# ------------------------------------------------------------------ Python imaplib / imapclient


def test_imaplib_starttls_archiving_job(igw):
    """The archiving client's job: UID FETCH BODY.PEEK[] in batches, UID STORE \\Deleted,
    UID EXPUNGE."""
    mbx, msgs = fill(igw, 5)
    c = imaplib_login(igw, mbx, mode="starttls")
    try:
        assert "IDLE" in c.capabilities and "UIDPLUS" in c.capabilities, c.capabilities
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"5"], data
        typ, data = c.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        assert typ == "OK" and len(uids) == 5, data
        got = {}
        for batch in (uids[:2], uids[2:]):
            typ, data = c.uid("FETCH", b",".join(batch).decode(), "(UID BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if isinstance(item, tuple):
                    uid = re.search(rb"UID (\d+)", item[0]).group(1)
                    got[uid] = item[1]
        assert [strip_received(got[u]) for u in uids] == [m for _, m in msgs]
        typ, data = c.uid("STORE", b",".join(uids).decode(), "+FLAGS.SILENT", "(\\Deleted)")
        assert typ == "OK", data
        typ, data = c.uid("EXPUNGE", b",".join(uids[:3]).decode())
        assert typ == "OK", data
        typ, data = c.select("INBOX")
        assert data == [b"2"], data
        c.close()  # CLOSE expunges the other two (still \Deleted)
        c.logout()
    finally:
        with contextlib.suppress(Exception):
            c.shutdown()
    assert message_count(igw, mbx) == 0
    assert igw.show(mbx["id"])["messages"] == 0


def test_imaplib_ssl_authenticate_and_sequence_delete(igw):
    mbx, msgs = fill(igw, 3)
    c = imaplib_connect(igw, mode="ssl")
    try:
        typ, data = c.authenticate(
            "PLAIN", lambda _: f"\0{mbx['id']}\0{mbx['password']}".encode())
        assert typ == "OK", data
        typ, data = c.select()
        assert data == [b"3"], data
        typ, data = c.fetch("1:3", "(RFC822)")
        assert typ == "OK", data
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        assert [strip_received(b) for b in bodies] == [m for _, m in msgs]
        typ, data = c.search(None, "SEEN")  # RFC822 set \Seen
        assert data[0].split() == [b"1", b"2", b"3"], data
        typ, data = c.store("2", "+FLAGS", "(\\Deleted)")
        assert typ == "OK", data
        typ, data = c.expunge()
        assert typ == "OK" and data == [b"2"], data
        typ, data = c.status("INBOX", "(MESSAGES UIDVALIDITY)")
        assert typ == "OK" and b"MESSAGES 2" in data[0], data
        c.logout()
    finally:
        with contextlib.suppress(Exception):
            c.shutdown()
    remaining = [strip_received(b) for _, b in sorted(fetch_bodies(igw, mbx).items())]
    assert remaining == [msgs[0][1], msgs[2][1]]


def test_imaplib_plaintext_login_refused(igw):
    mbx, _ = fill(igw, 1)
    c = imaplib_connect(igw, mode="plain")
    try:
        assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error) as ei:
            c.login(mbx["id"], mbx["password"])
        assert "PRIVACYREQUIRED" in str(ei.value), ei.value
    finally:
        with contextlib.suppress(Exception):
            c.shutdown()


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_imapclient(igw, tls):
    try:
        import imapclient
    except ImportError:
        pytest.fail("imapclient is not installed: pip install -r tests/requirements.txt")
    mbx, msgs = fill(igw, 3)
    if tls == "ssl":
        c = imapclient.IMAPClient("127.0.0.1", port=igw.imaps_port, ssl=True,
                                  ssl_context=unverified_ctx(), timeout=60)
    else:
        c = imapclient.IMAPClient("127.0.0.1", port=igw.imap_port, ssl=False, timeout=60)
        c.starttls(unverified_ctx())
    try:
        if tls == "ssl":
            c.plain_login(mbx["id"], mbx["password"])
        else:
            c.login(mbx["id"], mbx["password"])
        caps = c.capabilities()
        assert b"IDLE" in caps and b"MOVE" not in caps, caps
        assert [f[2] for f in c.list_folders()] == ["INBOX"]
        assert c.folder_exists("INBOX") and not c.folder_exists("Trash")
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3 and info[b"UIDVALIDITY"] == igw.show(mbx["id"])["uidvalidity"]
        uids = c.search(["ALL"])
        assert len(uids) == 3
        data = c.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[]", "FLAGS",
                              "INTERNALDATE"])
        for uid, (marker, msg) in zip(uids, msgs):
            d = data[uid]
            assert strip_received(d[b"BODY[]"]) == msg
            assert d[b"RFC822.SIZE"] == len(d[b"BODY[]"])
            assert d[b"ENVELOPE"].subject == marker.encode()
            assert d[b"ENVELOPE"].from_[0].mailbox == b"alice"
            assert d[b"BODYSTRUCTURE"][0].upper() == b"TEXT", d[b"BODYSTRUCTURE"]
        assert c.search(["SUBJECT", msgs[1][0]]) == [uids[1]]
        # IDLE: a new message is announced
        c.idle()
        send_smtp(igw, mbx["address"], build_message(subject="idle arrival"))
        responses = c.idle_check(timeout=2)
        c.idle_done()
        assert (4, b"EXISTS") in responses, responses
        c.delete_messages(uids[:2])
        c.expunge()
        assert len(c.search(["ALL"])) == 2
        with pytest.raises(imapclient.exceptions.IMAPClientError):
            c.create_folder("Trash")
        with pytest.raises(imapclient.exceptions.IMAPClientError):
            c.copy(uids[2:], "Trash")
        c.logout()
    finally:
        with contextlib.suppress(Exception):
            c.shutdown()
    assert message_count(igw, mbx) == 2


# ------------------------------------------------------------------ curl


def curl(*args, timeout=60):
    exe = need("curl")
    return subprocess.run([exe, "-sS", "--max-time", "40", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def test_curl(igw):
    mbx, msgs = fill(igw, 2)
    user = f"{mbx['id']}:{mbx['password']}"
    bodies = fetch_bodies(igw, mbx)
    uids = sorted(bodies)
    base = f"imap://127.0.0.1:{igw.imap_port}"
    # LIST
    p = curl("--ssl-reqd", "-k", f"{base}/", "-u", user)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.decode().split("\r\n") if ln]
    assert len(lines) == 1 and re.match(r'^\* LIST \(\\HasNoChildren\) "/" "?INBOX"?$', lines[0]), \
        p.stdout
    # fetch by UID: exactly the stored bytes
    for uid in uids:
        p = curl("--ssl-reqd", "-k", f"{base}/INBOX;UID={uid}", "-u", user)
        assert p.returncode == 0, p.stderr
        assert p.stdout == bodies[uid]
    # implicit TLS, and a SEARCH
    p = curl("-k", f"imaps://127.0.0.1:{igw.imaps_port}/INBOX?ALL", "-u", user)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [b"*", b"SEARCH"] + [str(n).encode() for n in (1, 2)], p.stdout
    # a custom command
    p = curl("--ssl-reqd", "-k", f"{base}/INBOX", "-X", "UID FETCH 1:* (FLAGS)", "-u", user)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(b"FETCH") == 2, p.stdout
    # without TLS curl cannot log in (LOGINDISABLED), and nothing is revealed
    p = curl(f"{base}/INBOX;UID={uids[0]}", "-u", user)
    assert p.returncode != 0, p.stdout
    assert msgs[0][0].encode() not in p.stdout
    # a wrong password
    p = curl("--ssl-reqd", "-k", f"{base}/INBOX;UID={uids[0]}", "-u", f"{mbx['id']}:wrong")
    assert p.returncode != 0 and msgs[0][0].encode() not in p.stdout
    assert fetch_bodies(igw, mbx) == bodies


# ------------------------------------------------------------------ mbsync


def test_mbsync_pull_then_expunge_far(igw, tmp_path):
    exe = need("mbsync")
    mbx, msgs = fill(igw, 4)
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    cert = self_signed_cert(igw)
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        "IMAPAccount gw\n"
        "Host 127.0.0.1\n"
        f"Port {igw.imap_port}\n"
        f"User {mbx['id']}\n"
        f"Pass {mbx['password']}\n"
        "SSLType STARTTLS\n"
        f"CertificateFile {cert}\n"
        "SystemCertificates no\n"
        "Timeout 60\n\n"
        "IMAPStore far\n"
        "Account gw\n\n"
        "MaildirStore near\n"
        f"Path {maildir}/\n"
        f"Inbox {maildir}/INBOX\n\n"
        "Channel pull\n"
        "Far :far:\n"
        "Near :near:\n"
        "Patterns INBOX\n"
        "Create Near\n"
        "Sync Pull\n"
        "SyncState *\n\n"
        "Channel all\n"
        "Far :far:\n"
        "Near :near:\n"
        "Patterns INBOX\n"
        "Sync All\n"
        "Expunge Far\n"
        "SyncState *\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path))

    def run(channel):
        p = subprocess.run([exe, "-c", str(rc), "-V", channel], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, env=env, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        return p

    run("pull")
    inbox = maildir / "INBOX"
    files = sorted(list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir()))
    assert len(files) == 4, files
    holders([f.read_bytes() for f in files], msgs)
    assert message_count(igw, mbx) == 4  # a pull changes nothing on the server
    # incremental run: nothing new
    run("pull")
    assert len(list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())) == 4
    # delete two messages locally and propagate: UID STORE \Deleted, then CLOSE
    gone = [f for f in files if contains_message(f.read_bytes(), msgs[0][1])
            or contains_message(f.read_bytes(), msgs[2][1])]
    assert len(gone) == 2
    for f in gone:
        f.unlink()
    run("all")
    left = [strip_received(b) for _, b in sorted(fetch_bodies(igw, mbx).items())]
    assert left == [msgs[1][1], msgs[3][1]]
    assert igw.show(mbx["id"])["messages"] == 2
    # new mail arrives; the next sync brings it in
    late = build_message(subject="late for mbsync")
    send_smtp(igw, mbx["address"], late)
    run("all")
    files = list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())
    assert len(files) == 3
    holders([f.read_bytes() for f in files], [("late", late)])
    # the archive keeps everything: delete all locally, and the server mailbox is emptied
    for f in files:
        f.unlink()
    run("all")
    assert message_count(igw, mbx) == 0
    assert igw.show(mbx["id"])["messages"] == 0


# ------------------------------------------------------------------ offlineimap


def test_offlineimap_readonly(igw, tmp_path):
    exe = need("offlineimap")
    mbx, msgs = fill(igw, 3)
    der = ssl.PEM_cert_to_DER_cert(served_cert_pem(igw.imaps_port))
    fp = hashlib.sha256(der).hexdigest()
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        "[general]\n"
        "accounts = gw\n"
        f"metadata = {tmp_path}/meta\n"
        "ui = basic\n\n"
        "[Account gw]\n"
        "localrepository = local\n"
        "remoterepository = remote\n\n"
        "[Repository local]\n"
        "type = Maildir\n"
        f"localfolders = {tmp_path}/mail\n\n"
        "[Repository remote]\n"
        "type = IMAP\n"
        "remotehost = 127.0.0.1\n"
        f"remoteport = {igw.imaps_port}\n"
        "ssl = yes\n"
        f"cert_fingerprint = {fp}\n"
        f"remoteuser = {mbx['id']}\n"
        f"remotepass = {mbx['password']}\n"
        "readonly = True\n"
        "folderfilter = lambda f: f == 'INBOX'\n"
    )
    env = dict(os.environ, HOME=str(tmp_path))
    p = subprocess.run([exe, "-c", str(rc), "-o", "-u", "basic"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "ERROR" not in out, out
    inbox = tmp_path / "mail" / "INBOX"
    files = list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())
    assert len(files) == 3, (files, out)
    holders([f.read_bytes() for f in files], msgs)
    # the server is unchanged: every message still there, none marked \Seen or \Deleted
    with contextlib.closing(raw_login(igw, mbx, select=True)) as c:
        r = c.cmd("SEARCH OR SEEN DELETED")
        assert r.ok and r.search() == [], r
        assert len(uid_map(c)) == 3
        c.cmd("LOGOUT")
    assert igw.show(mbx["id"])["messages"] == 3


# ------------------------------------------------------------------ getmail6


def test_getmail6_imap_delete(igw, tmp_path, maildir_for_getmail):
    exe = need("getmail")
    mbx, msgs = fill(igw, 3)
    maildir, deliver_as = maildir_for_getmail
    p = run_getmail(exe, tmp_path / "getmail", "SimpleIMAPSSLRetriever", igw.imaps_port, mbx,
                    maildir, deliver_as, retriever_options='mailboxes = ("INBOX",)\n')
    assert p.returncode == 0, p.stdout + p.stderr
    files = list((maildir / "new").iterdir())
    assert len(files) == 3, (files, p.stdout)
    holders([f.read_bytes() for f in files], msgs)
    assert message_count(igw, mbx) == 0
    assert igw.show(mbx["id"])["messages"] == 0


# ------------------------------------------------------------------ fetchmail


@pytest.mark.parametrize("tls", ["starttls", "imaps"])
def test_fetchmail_imap_delete(igw, tmp_path, tls):
    exe = need("fetchmail")
    mbx, msgs = fill(igw, 3)
    port = igw.imaps_port if tls == "imaps" else igw.imap_port
    rc, out, env = fetchmail_rc(tmp_path / "fm", "IMAP", port, tls == "imaps", mbx)
    p = subprocess.run([exe, "-f", str(rc), "-v", "--nodetach"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    data = out.read_bytes()
    for marker, msg in msgs:
        assert data.count(f"Subject: {marker}".encode()) == 1, marker
        assert lf(msg) in lf(data), marker
    assert message_count(igw, mbx) == 0
    # second run: nothing left (exit code 1 = no mail)
    p = subprocess.run([exe, "-f", str(rc), "--nodetach"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr


# ------------------------------------------------------------------ neomutt under tmux


def test_neomutt_read_and_delete(igw, tmp_path):
    mbx, msgs = fill(igw, 3)
    tm = start_neomutt(tmp_path, f"imaps://{mbx['id']}@127.0.0.1:{igw.imaps_port}/",
                       mbx["id"], mbx["password"], served_cert_pem(igw.imaps_port))
    try:
        accept_cert = tm.accept_cert
        markers = [m for m, _ in msgs]
        tm.wait_for(lambda s: all(m in s for m in markers), "the index with 3 messages",
                    on_screen=accept_cert)
        # open message 1: jump to it, then display it
        tm.keys("1", "Enter")
        time.sleep(0.3)
        tm.keys("Enter")
        s = tm.wait_for(lambda s: f"body of {markers[0]}" in s, "the pager with message 1")
        tm.keys("q")
        tm.wait_for(lambda s: all(m in s for m in markers), "back in the index")
        tm.keys("1", "Enter")
        time.sleep(0.3)
        tm.keys("d")
        tm.wait_for(lambda s: re.search(r"^\s*1\s+\S*D.*" + re.escape(markers[0]), s, re.M),
                    "message 1 marked deleted")
        tm.keys("$")
        tm.wait_for(lambda s: markers[0] not in s and markers[1] in s, "the synced index")
        tm.keys("q")
        s = tm.wait_for(lambda s: "NEOMUTT-EXITED-" in s, "neomutt to exit")
        assert "NEOMUTT-EXITED-0" in s, s
    finally:
        tm.kill()
    left = [strip_received(b) for _, b in sorted(fetch_bodies(igw, mbx).items())]
    assert left == [msgs[1][1], msgs[2][1]]
    assert igw.show(mbx["id"])["messages"] == 2
