"""POP3 collection: curl, poplib, fetchmail and getmail6 against a live gateway."""

from __future__ import annotations

import base64
import contextlib
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from jgharness import (
    HOSTNAME, auth_plain_b64, make_message, pop3_connect, pop3_error_text, pop3_fetch_all,
    fetchmail_rc, pop3_login, pop3_retr, pop3_stat, run_getmail, send_smtp, strip_received,
    unverified_ctx, wait_until,
)


def fill(gw, n=3, mbx=None):
    mbx = mbx or gw.create_mailbox()
    msgs = []
    for i in range(n):
        marker = f"pop3-marker-{i}-{os.urandom(6).hex()}"
        msg = make_message(subject=marker, body=f"line one {marker}\r\nline two\r\nline three\r\n"
                           "line four\r\n")
        send_smtp(gw, mbx["address"], msg)
        msgs.append((marker, msg))
    return mbx, msgs


def closing(p):
    return contextlib.closing(p)


def curl(*args, timeout=60):
    exe = shutil.which("curl")
    assert exe, "curl is not installed"
    return subprocess.run([exe, "-sS", "--max-time", "40", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


# ------------------------------------------------------------------ curl


def test_curl_list_retr_dele(gw):
    mbx, msgs = fill(gw, 2)
    user = f"{mbx['id']}:{mbx['password']}"
    p = curl("--ssl-reqd", "-k", f"pop3://127.0.0.1:{gw.pop3_port}/", "-u", user)
    assert p.returncode == 0, p.stderr
    listing = p.stdout.decode().split("\r\n")
    listing = [ln for ln in listing if ln]
    assert [ln.split()[0] for ln in listing] == ["1", "2"], p.stdout
    stored = pop3_fetch_all(gw, mbx)
    assert [int(ln.split()[1]) for ln in listing] == [len(m) for _, m in stored]

    p = curl("-k", f"pop3s://127.0.0.1:{gw.pop3s_port}/1", "-u", user)
    assert p.returncode == 0, p.stderr
    assert p.stdout == stored[0][1]
    assert strip_received(p.stdout) == msgs[0][1]

    # login name may carry @hostname
    p = curl("-k", f"pop3s://127.0.0.1:{gw.pop3s_port}/2", "-u",
             f"{mbx['id']}@{HOSTNAME}:{mbx['password']}")
    assert p.returncode == 0, p.stderr
    assert strip_received(p.stdout) == msgs[1][1]

    p = curl("-k", f"pop3s://127.0.0.1:{gw.pop3s_port}/", "-u", user, "-X", "DELE 1", "-I")
    assert p.returncode == 0, p.stderr
    left = pop3_fetch_all(gw, mbx)
    assert [strip_received(m) for _, m in left] == [msgs[1][1]]


def test_curl_refuses_plaintext_login(gw):
    """curl without TLS on the plain port: the server offers no way to log in."""
    mbx, _ = fill(gw, 1)
    p = curl(f"pop3://127.0.0.1:{gw.pop3_port}/", "-u", f"{mbx['id']}:{mbx['password']}")
    assert p.returncode != 0, p.stdout
    assert pop3_stat(gw, mbx)[0] == 1


# ------------------------------------------------------------------ poplib basics


def test_capa_before_and_after_tls(gw):
    with closing(pop3_connect(gw, mode="plain")) as p:
        assert p.getwelcome().startswith(b"+OK journalgate POP3 ready"), p.getwelcome()
        capa = p.capa()
        for k in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
            assert k in capa, capa
        assert "USER" not in capa and "SASL" not in capa, capa
        p.stls(context=unverified_ctx())
        capa = p.capa()
        for k in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "SASL"):
            assert k in capa, capa
        assert "PLAIN" in capa["SASL"], capa
        assert "STLS" not in capa, capa
    with closing(pop3_connect(gw, mode="ssl")) as p:
        capa = p.capa()
        assert "USER" in capa and "PLAIN" in capa.get("SASL", []) and "STLS" not in capa, capa


def test_quit_before_login(gw):
    """RFC 1939: QUIT is valid in the AUTHORIZATION state (+OK, then close)."""
    for mode in ("plain", "stls", "ssl"):
        p = pop3_connect(gw, mode=mode)
        try:
            assert p.quit().startswith(b"+OK"), mode
        finally:
            p.close()


def test_no_credentials_before_tls(gw):
    mbx, _ = fill(gw, 1)
    with closing(pop3_connect(gw, mode="plain")) as p:
        with pytest.raises(poplib.error_proto) as ei:
            p.user(mbx["id"])
        assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value
        with pytest.raises(poplib.error_proto) as ei:
            p.pass_(mbx["password"])
        assert pop3_error_text(ei.value).startswith(b"-ERR"), ei.value
        with pytest.raises(poplib.error_proto) as ei:
            p._shortcmd("AUTH PLAIN " + auth_plain_b64(mbx["id"], mbx["password"]))
        assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value
        with pytest.raises(poplib.error_proto):
            p.stat()


def test_auth_plain(gw):
    mbx, msgs = fill(gw, 1)
    with closing(pop3_connect(gw)) as p:
        resp = p._shortcmd("AUTH PLAIN " + auth_plain_b64(mbx["id"], mbx["password"]))
        assert resp.startswith(b"+OK"), resp
        assert p.stat()[0] == 1
        p.quit()
    # without initial response: server answers "+ " and waits
    with closing(pop3_connect(gw, mode="ssl")) as p:
        p._putcmd("AUTH PLAIN")
        line, _ = p._getline()
        assert line.startswith(b"+"), line
        p._putcmd(auth_plain_b64(f"{mbx['id']}@{HOSTNAME}", mbx["password"]))
        resp = p._getresp()
        assert resp.startswith(b"+OK"), resp
        assert strip_received(pop3_retr(p, 1)) == msgs[0][1]
        p.quit()
    with closing(pop3_connect(gw)) as p:
        with pytest.raises(poplib.error_proto) as ei:
            p._shortcmd("AUTH PLAIN " + auth_plain_b64(mbx["id"], "wrong-password"))
        assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value


def test_transaction_commands(gw):
    mbx, msgs = fill(gw, 3)
    uidvalidity = gw.show(mbx["id"])["uidvalidity"]
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        count, total = p.stat()
        assert count == 3
        _, listing, _ = p.list()
        sizes = {int(a): int(b) for a, b in (x.split() for x in listing)}
        assert sorted(sizes) == [1, 2, 3]
        assert sum(sizes.values()) == total
        assert p.list(2).split()[:3] == [b"+OK", b"2", str(sizes[2]).encode()]
        _, uidls, _ = p.uidl()
        uids = [x.split()[1].decode() for x in uidls]
        assert len(set(uids)) == 3
        for u in uids:
            v, _, n = u.partition(".")
            assert v == str(uidvalidity) and n.isdigit(), u
        assert p.uidl(3).split()[2].decode() == uids[2]
        for i in (1, 2, 3):
            raw = pop3_retr(p, i)
            assert len(raw) == sizes[i], "LIST size must be the exact octet count"
            assert strip_received(raw) == msgs[i - 1][1]
        # TOP n 0 = header + blank line; TOP n 2 = header + 2 body lines
        full = pop3_retr(p, 1)
        head, _, body = full.partition(b"\r\n\r\n")
        resp, lines, _ = p.top(1, 0)
        assert b"".join(ln + b"\r\n" for ln in lines) == head + b"\r\n\r\n"
        resp, lines, _ = p.top(1, 2)
        assert b"".join(ln + b"\r\n" for ln in lines) == head + b"\r\n\r\n" + b"\r\n".join(
            body.split(b"\r\n")[:2]) + b"\r\n"
        assert p.noop().startswith(b"+OK")
        with pytest.raises(poplib.error_proto):
            p.retr(4)
        with pytest.raises(poplib.error_proto):
            p.list(0)
        p.quit()


def test_dele_rset_drop_quit(gw):
    mbx, msgs = fill(gw, 3)
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        assert p.dele(1).startswith(b"+OK")
        assert p.stat()[0] == 2
        with pytest.raises(poplib.error_proto):
            p.retr(1)
        with pytest.raises(poplib.error_proto):
            p.dele(1)
        assert p.rset().startswith(b"+OK")
        assert p.stat()[0] == 3
        p.quit()
    assert pop3_stat(gw, mbx)[0] == 3

    # DELE then drop the connection without QUIT: nothing is removed
    p = pop3_login(gw, mbx["id"], mbx["password"])
    assert p.dele(2).startswith(b"+OK")
    p.sock.shutdown(socket.SHUT_RDWR)
    p.close()

    def stat_after_drop():
        try:
            return pop3_stat(gw, mbx)
        except poplib.error_proto as e:  # the lock may take a moment to be released
            if b"[IN-USE]" in pop3_error_text(e):
                return None
            raise

    st = wait_until(stat_after_drop, 10, interval=0.2, what="lock release after drop")
    assert st[0] == 3

    # DELE then QUIT removes
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        p.dele(2)
        assert p.quit().startswith(b"+OK")
    left = pop3_fetch_all(gw, mbx)
    assert [strip_received(m) for _, m in left] == [msgs[0][1], msgs[2][1]]
    assert gw.show(mbx["id"])["messages"] == 2


def test_uidl_stable_across_sessions_and_restart(gw):
    mbx, _ = fill(gw, 3)
    first = pop3_fetch_all(gw, mbx)
    second = pop3_fetch_all(gw, mbx, mode="ssl")
    assert first == second
    gw.restart()
    third = pop3_fetch_all(gw, mbx)
    assert third == first
    # deleting one keeps the others' UIDLs
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        p.dele(2)
        p.quit()
    fourth = pop3_fetch_all(gw, mbx)
    assert fourth == [first[0], first[2]]
    # a new message gets a fresh UIDL
    send_smtp(gw, mbx["address"], make_message(subject="fresh"))
    fifth = [u for u, _ in pop3_fetch_all(gw, mbx)]
    assert fifth[:2] == [first[0][0], first[2][0]]
    assert fifth[2] not in {u for u, _ in first}


def test_mailbox_lock(gw):
    mbx, _ = fill(gw, 1)
    p1 = pop3_login(gw, mbx["id"], mbx["password"])
    try:
        p2 = pop3_connect(gw, mode="ssl")
        with closing(p2):
            p2.user(mbx["id"])
            with pytest.raises(poplib.error_proto) as ei:
                p2.pass_(mbx["password"])
            assert pop3_error_text(ei.value).startswith(b"-ERR [IN-USE]"), ei.value
        assert p1.stat()[0] == 1
        p1.quit()
    finally:
        p1.close()
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p3:
        assert p3.stat()[0] == 1
        p3.quit()


def _failed_login_time(gw, user, password) -> tuple[float, bytes]:
    with closing(pop3_connect(gw)) as p:
        p.user(user)
        t0 = time.monotonic()
        try:
            p.pass_(password)
        except poplib.error_proto as e:
            return time.monotonic() - t0, pop3_error_text(e)
        raise AssertionError("login with a wrong password succeeded")


def test_wrong_password_delay_grows(gw):
    mbx, _ = fill(gw, 1)
    times = []
    for i in range(4):
        dt, err = _failed_login_time(gw, mbx["id"], f"wrong-{i}")
        assert err.startswith(b"-ERR [AUTH]"), err
        times.append(dt)
    # failure_delay_ms = 200, doubling: about 0.2, 0.4, 0.8, 1.6 s, plus a per-attempt
    # cost (scrypt unwrap, machine load) that is the same for every attempt; so compare
    # differences, not ratios: the 4th is ~1.4 s slower than the 1st
    assert times[0] >= 0.15, times
    assert times[3] >= 1.0, times
    assert times[3] - times[0] >= 0.9, times
    # a correct password still works afterwards (possibly after the delay)
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        assert p.stat()[0] == 1
        p.quit()


def test_password_is_per_mailbox(gw):
    a, _ = fill(gw, 1)
    b, _ = fill(gw, 1)
    for user in (b["id"], f"{b['id']}@{HOSTNAME}"):
        with pytest.raises(poplib.error_proto) as ei:
            pop3_login(gw, user, a["password"])
        assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value
    with pytest.raises(poplib.error_proto) as ei:
        pop3_login(gw, "mbx-" + "0" * 32, a["password"])
    assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value


def test_suspended_mailbox_still_collectable(gw):
    mbx, msgs = fill(gw, 2)
    gw.cli("mailbox", "suspend", mbx["id"])
    got = pop3_fetch_all(gw, mbx, delete=True)
    assert [strip_received(m) for _, m in got] == [m for _, m in msgs]
    assert pop3_stat(gw, mbx)[0] == 0


# ------------------------------------------------------------------ archiving clients


@pytest.mark.parametrize("tls", ["stls", "pop3s"])
def test_fetchmail_collects_and_deletes(gw, tmp_path, tls):
    exe = shutil.which("fetchmail")
    assert exe, "fetchmail is not installed"
    mbx, msgs = fill(gw, 3)
    port = gw.pop3s_port if tls == "pop3s" else gw.pop3_port
    rc, out, env = fetchmail_rc(tmp_path / "fm", "POP3", port, tls == "pop3s", mbx)
    # own pid file: as root fetchmail defaults to /var/run/fetchmail.pid, which would make
    # parallel runs (xdist) refuse with "another foreground fetchmail is running"
    base_args = [exe, "-f", str(rc), "--nodetach", "--pidfile", str(rc.parent / "fetchmail.pid")]
    p = subprocess.run([*base_args, "-v"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    data = out.read_bytes()
    for marker, msg in msgs:
        assert data.count(f"Subject: {marker}".encode()) == 1, marker
        # fetchmail adds its own Received: on top and writes LF line endings
        assert msg.replace(b"\r\n", b"\n") in data
    assert pop3_stat(gw, mbx) == (0, 0)
    # second run: nothing left (fetchmail exit code 1 = no mail)
    p = subprocess.run(base_args, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr


def test_getmail6_collects_and_deletes(gw, tmp_path, maildir_for_getmail):
    exe = shutil.which("getmail")
    assert exe, "getmail (getmail6) is not installed"
    mbx, msgs = fill(gw, 3)
    maildir, deliver_as = maildir_for_getmail
    p = run_getmail(exe, tmp_path / "getmail", "SimplePOP3SSLRetriever", gw.pop3s_port, mbx,
                    maildir, deliver_as)
    assert p.returncode == 0, p.stdout + p.stderr
    files = list((maildir / "new").iterdir())
    assert len(files) == 3, (files, p.stdout)
    contents = [f.read_bytes().replace(b"\r\n", b"\n") for f in files]
    # getmail writes LF line endings and may add its own headers on top: each original
    # message (headers and body) must be contained, whole and exactly once
    for marker, msg in msgs:
        lf = msg.replace(b"\r\n", b"\n")
        holders = [c for c in contents if lf in c]
        assert len(holders) == 1, marker
    assert pop3_stat(gw, mbx) == (0, 0)


# ------------------------------------------------------------------ robustness / security


def test_stls_command_injection(gw):
    """A USER pipelined in plaintext after STLS must not count inside the TLS session."""
    mbx, _ = fill(gw, 1)
    s = socket.create_connection(("127.0.0.1", gw.pop3_port), timeout=30)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(f"STLS\r\nUSER {mbx['id']}\r\n".encode())
        resp = f.readline()
        assert resp.startswith(b"+OK"), resp
        try:
            t = unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME)
        except (OSError, ssl.SSLError):
            return  # connection dropped: safe
        tf = t.makefile("rb")
        t.sendall(f"PASS {mbx['password']}\r\n".encode())
        resp = tf.readline()
        assert resp.startswith(b"-ERR"), f"injected USER was honoured: PASS answered {resp!r}"
    finally:
        s.close()


def test_pipelining(gw):
    mbx, msgs = fill(gw, 2)
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        p.sock.sendall(b"STAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nNOOP\r\n")
        assert p._getresp().startswith(b"+OK 2 ")
        resp, lines, _ = p._getlongresp()
        assert resp.startswith(b"+OK") and len(lines) == 2
        assert p._getresp().startswith(b"+OK 2 ")
        resp, lines, _ = p._getlongresp()
        assert strip_received(b"".join(ln + b"\r\n" for ln in lines)) == msgs[0][1]
        assert p._getresp().startswith(b"+OK")
        p.quit()


def test_new_mail_during_session_survives_quit(gw):
    mbx, msgs = fill(gw, 2)
    with closing(pop3_login(gw, mbx["id"], mbx["password"])) as p:
        _, before, _ = p.uidl()
        late = make_message(subject="arrived during the session")
        send_smtp(gw, mbx["address"], late)
        count, _ = p.stat()
        assert count in (2, 3), count
        _, during, _ = p.uidl()
        assert during[:2] == before, "message numbers changed during the session"
        p.dele(1)
        p.dele(2)
        p.quit()
    got = pop3_fetch_all(gw, mbx)
    assert [strip_received(x) for _, x in got] == [late]


def test_pop3_idle_timeout(make_gw):
    gw = make_gw(pop3={"timeout_secs": 2})
    mbx, _ = fill(gw, 1)
    p = pop3_login(gw, mbx["id"], mbx["password"])
    try:
        p.dele(1)
        p.sock.settimeout(15)
        t0 = time.monotonic()
        try:
            data = p.sock.recv(4096)
            while data:  # an optional -ERR/+OK notice, then EOF
                data = p.sock.recv(4096)
        except (ConnectionError, ssl.SSLError):
            pass
        except socket.timeout:
            raise AssertionError("idle POP3 session was not closed") from None
        assert time.monotonic() - t0 < 12
    finally:
        p.close()
    # the lock is released and the DELE of the timed-out session was not applied
    assert pop3_stat(gw, mbx)[0] == 1


def test_top_beyond_body_and_auth_edge_cases(gw):
    a, msgs = fill(gw, 1)
    b, _ = fill(gw, 1)
    with closing(pop3_login(gw, a["id"], a["password"])) as p:
        full = pop3_retr(p, 1)
        _, lines, _ = p.top(1, 100000)
        assert b"".join(ln + b"\r\n" for ln in lines) == full
        p.quit()
    # authzid naming another mailbox must not open it
    with closing(pop3_connect(gw)) as p:
        raw = base64.b64encode(f"{b['id']}\0{a['id']}\0{a['password']}".encode()).decode()
        try:
            resp = p._shortcmd("AUTH PLAIN " + raw)
        except poplib.error_proto as e:
            resp = pop3_error_text(e)
        if resp.startswith(b"+OK"):
            # accepted: it must be A's mailbox (authzid ignored), never B's
            _, uidl, _ = p.uidl()
            assert strip_received(pop3_retr(p, 1)) == msgs[0][1]
        else:
            assert resp.startswith(b"-ERR"), resp
    with closing(pop3_connect(gw)) as p:
        with pytest.raises(poplib.error_proto):
            p._shortcmd("AUTH PLAIN !!!not-base64!!!")
        assert p.capa()  # still talking
        p._putcmd("AUTH PLAIN")
        line, _ = p._getline()
        assert line.startswith(b"+")
        p._putcmd("*")  # client cancels
        with pytest.raises(poplib.error_proto):
            p._getresp()
        with pytest.raises(poplib.error_proto) as ei:
            p._shortcmd("AUTH CRAM-MD5")
        assert pop3_error_text(ei.value).startswith(b"-ERR")


def test_pop3_huge_line(gw):
    mbx, _ = fill(gw, 1)
    s = socket.create_connection(("127.0.0.1", gw.pop3_port), timeout=30)
    try:
        assert s.recv(1000).startswith(b"+OK")
        time.sleep(0.2)
        rss_before = gw.rss_kb()
        try:
            for _ in range(10):
                s.sendall(b"A" * (1 << 20))
        except OSError:
            pass
        s.settimeout(15)
        try:
            answer = s.recv(1000)
        except (OSError, socket.timeout) as e:
            answer = repr(e).encode()
        time.sleep(0.3)
        rss_after = gw.rss_kb()
    finally:
        s.close()
    assert not answer.startswith(b"+OK"), answer
    assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)
    assert pop3_stat(gw, mbx)[0] == 1


def test_pop3_max_connections(make_gw):
    gw = make_gw(pop3={"max_connections": 2})
    c1 = pop3_connect(gw, mode="plain")
    c2 = pop3_connect(gw, mode="plain")
    try:
        s = socket.create_connection(("127.0.0.1", gw.pop3_port), timeout=30)
        with closing(s):
            s.settimeout(10)
            try:
                greeting = s.recv(1000)
            except (ConnectionError, socket.timeout) as e:
                greeting = repr(e).encode()
            assert not greeting.startswith(b"+OK"), greeting
        assert c1.capa()
    finally:
        c1.close()
        c2.close()


def test_uids_never_reused(gw):
    mbx, _ = fill(gw, 3)
    first = {u for u, _ in pop3_fetch_all(gw, mbx, delete=True)}
    assert len(first) == 3
    gw.restart()
    send_smtp(gw, mbx["address"], make_message(subject="after restart"))
    second = {u for u, _ in pop3_fetch_all(gw, mbx, delete=True)}
    assert len(second) == 1 and not (second & first), (first, second)
    # even with the index gone
    gw.stop()
    (gw.data_dir / "index.redb").unlink()
    gw.start()
    send_smtp(gw, mbx["address"], make_message(subject="after index loss"))
    third = {u for u, _ in pop3_fetch_all(gw, mbx)}
    assert len(third) == 1 and not (third & (first | second)), (first, second, third)
