"""Spool layout and encryption format per the contract; emergency decryption with the
standard `age` tool (Debian package `age`) works with the mailbox password."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import time

from jgharness import make_message, pop3_fetch_all, pop3_login, send_smtp

# CONTRACT.md: msg/<uid>.<unix>.<size>.age. The server (src/spool.rs) appends
# .<envelope length>[.<flag letters>] before .age; uid, time and size must lead.
MSG_NAME_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\.[0-9A-Za-z]+)*\.age$")


def age_decrypt_with_passphrase(identity_file, passphrase, infile, outfile, timeout=60):
    """Run `age -d -i <passphrase-protected identity>`; age reads the passphrase from
    its terminal only, so give it a pty."""
    exe = shutil.which("age")
    assert exe, "the age tool is not installed (tests/run.sh installs the Debian package)"
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execv(exe, [exe, "-d", "-i", str(identity_file), "-o", str(outfile), str(infile)])
        finally:
            os._exit(127)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"passphrase" in out.lower():
                os.write(fd, passphrase.encode() + b"\n")
                sent = True
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.replace(passphrase.encode(), b"<password>")


def test_spool_layout(gw):
    m = gw.create_mailbox()
    msgs = [make_message(subject=f"layout {i}") for i in range(2)]
    for msg in msgs:
        send_smtp(gw, m["address"], msg)
    box = gw.data_dir / "mailboxes" / m["id"]
    for name in ("mailbox.json", "identity.age", "uidstate", "msg"):
        assert (box / name).exists(), f"{name} missing in {sorted(os.listdir(box))}"
    assert (gw.data_dir / "tmp").is_dir()
    assert (gw.data_dir / "index.redb").is_file()
    assert (gw.data_dir / "tls").is_dir()
    assert (gw.data_dir / "admin.sock").exists()

    p = pop3_login(gw, m["id"], m["password"])
    try:
        _, uidl, _ = p.uidl()
        _, listing, _ = p.list()
        p.quit()
    finally:
        p.close()
    uid_of = {int(a): int(b.decode().split(".")[1]) for a, b in (x.split() for x in uidl)}
    size_of = {int(a): int(b) for a, b in (x.split() for x in listing)}
    names = sorted(os.listdir(box / "msg"))
    assert len(names) == 2, names
    parsed = []
    for name in names:
        mt = MSG_NAME_RE.match(name)
        assert mt, f"message file name {name!r} is not <uid>.<unix>.<size>[...].age"
        parsed.append(tuple(int(x) for x in mt.groups()))
    parsed.sort()
    for n, (uid, unix, size) in enumerate(parsed, start=1):
        assert uid == uid_of[n], (name, uid_of)
        assert abs(unix - time.time()) < 600
        assert size == size_of[n], f"size in file name {size} != POP3 size {size_of[n]}"


def test_age_format_and_emergency_decrypt(gw, tmp_path):
    m = gw.create_mailbox()
    msg = make_message(subject="emergency decrypt", body="Gr\u00fc\u00dfe\r\n")
    send_smtp(gw, m["address"], msg)
    box = gw.data_dir / "mailboxes" / m["id"]
    ident = box / "identity.age"
    head = ident.read_bytes().split(b"\n")
    assert head[0] == b"age-encryption.org/v1"
    assert head[1].startswith(b"-> scrypt "), head[1]
    files = sorted((box / "msg").iterdir())
    assert len(files) == 1
    mhead = files[0].read_bytes()[:4096].split(b"\n")
    assert mhead[0] == b"age-encryption.org/v1"
    assert any(ln.startswith(b"-> X25519 ") for ln in mhead), mhead[:4]

    served = pop3_fetch_all(gw, m)[0][1]
    out = tmp_path / "decrypted.eml"
    rc, tty = age_decrypt_with_passphrase(ident, m["password"], files[0], out)
    assert rc == 0, tty
    plain = out.read_bytes()
    # the spool file may carry an envelope record before the message; the message
    # itself (Received: + bytes as received) must be there verbatim
    assert plain.endswith(served), plain[:300]

    rc, tty = age_decrypt_with_passphrase(ident, "not-the-password", files[0], tmp_path / "x")
    assert rc != 0, tty
