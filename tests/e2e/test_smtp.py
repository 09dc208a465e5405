"""SMTP intake over real sockets: swaks, smtplib, raw BDAT/pipelining and error answers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import threading
import time

import pytest

from jgharness import (
    HOSTNAME, RawSMTP, dot_stuff, make_message, pop3_fetch_all, pop3_retr_raw, pop3_stat,
    send_raw_data, send_smtp, smtp_connect, strip_received, unverified_ctx, wait_until,
)

SWAKS = shutil.which("swaks")


def swaks(gw, *args, timeout=60):
    assert SWAKS, "swaks is not installed (tests/run.sh installs it)"
    p = subprocess.run([SWAKS, "--server", f"127.0.0.1:{gw.smtp_port}", "--helo", "client.test",
                        "--timeout", "30", *args],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return p


def smtp_exc_codes(e):
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return [code for code, _ in e.recipients.values()]
    if isinstance(e, smtplib.SMTPResponseException):
        return [e.smtp_code]
    return []


def only_message(gw, mbx) -> bytes:
    got = pop3_fetch_all(gw, mbx)
    assert len(got) == 1, f"expected exactly one message, got {len(got)}"
    return got[0][1]


# ----------------------------------------------------------------- real clients


def test_swaks_starttls(gw):
    m = gw.create_mailbox()
    marker = "swaks-marker-" + os.urandom(6).hex()
    p = swaks(gw, "--tls", "--to", m["address"], "--from", "journal@contoso.example",
              "--header", f"Subject: {marker}", "--body", f"body {marker}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "TLS started" in p.stdout and "<~  250" in p.stdout, p.stdout
    msg = only_message(gw, m)
    assert msg.startswith(b"Received:")
    assert f"Subject: {marker}".encode() in msg
    assert f"body {marker}".encode() in msg
    assert b"X-Mailer: swaks" in msg


def test_swaks_several_recipients_one_copy_each(gw):
    a = gw.create_mailbox()
    b = gw.create_mailbox()
    c = gw.create_mailbox()
    rcpts = ",".join([a["address"], b["address"], a["address"].upper().replace("@GW.TEST", "@gw.test")])
    p = swaks(gw, "--tls", "--to", rcpts, "--from", "journal@contoso.example")
    assert p.returncode == 0, p.stdout + p.stderr
    ma = only_message(gw, a)
    mb = only_message(gw, b)
    assert strip_received(ma) == strip_received(mb)
    assert pop3_stat(gw, c)[0] == 0


def test_swaks_null_sender(gw):
    m = gw.create_mailbox()
    p = swaks(gw, "--tls", "--to", m["address"], "--from", "<>", "--header", "Subject: ndr")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "MAIL FROM:<>" in p.stdout, p.stdout
    msg = only_message(gw, m)
    assert b"Subject: ndr" in msg


def test_smtplib_implicit_tls_exact_bytes(gw):
    m = gw.create_mailbox()
    msg = make_message(subject="implicit tls", body="Gr\u00fc\u00dfe aus K\u00f6ln\r\n")
    send_smtp(gw, m["address"], msg, tls="implicit")
    assert strip_received(only_message(gw, m)) == msg


def test_smtplib_plain_and_several_rcpts_same_mailbox(gw):
    m = gw.create_mailbox()
    msg = make_message(subject="plain")
    refused = send_smtp(gw, [m["address"], m["address"], m["address"].upper()], msg, tls=None)
    assert refused == {}
    assert strip_received(only_message(gw, m)) == msg


def test_received_header_shape(gw):
    m = gw.create_mailbox()
    msg = make_message()
    send_smtp(gw, m["address"], msg)
    got = only_message(gw, m)
    head = got[: len(got) - len(msg)]
    assert got.endswith(msg)
    assert head.startswith(b"Received:") and head.endswith(b"\r\n")
    lines = head[:-2].split(b"\r\n")
    for ln in lines[1:]:
        assert ln.startswith(b"\t"), f"continuation line must start with TAB: {ln!r}"
    assert HOSTNAME.encode() in head


def test_smtputf8_sender(gw):
    m = gw.create_mailbox()
    msg = make_message(sender="j\u00f6rg@contoso.example", subject="utf8")
    with smtp_connect(gw) as s:
        assert s.has_extn("smtputf8")
        s.sendmail("j\u00f6rg@contoso.example", [m["address"]], msg,
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert strip_received(only_message(gw, m)) == msg


# ----------------------------------------------------------------- EHLO / greeting


def test_greeting_and_ehlo_keywords(make_gw):
    gw = make_gw(smtp={"max_message_size": 12345678})
    with RawSMTP(gw.smtp_port) as c:
        assert c.greeting[0] == 220
        assert c.greeting[1].startswith(f"220 {HOSTNAME} ESMTP journalgate"), c.greeting
        kw = c.ehlo()
        names = {k.split()[0].upper() for k in kw}
        for need in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS",
                     "SMTPUTF8", "CHUNKING"):
            assert need in names, (need, kw)
        size = [k for k in kw if k.upper().startswith("SIZE")][0]
        assert size.split()[1] == "12345678", size
        c.starttls()
        kw2 = c.ehlo()
        names2 = {k.split()[0].upper() for k in kw2}
        assert "STARTTLS" not in names2, kw2
        assert {"PIPELINING", "CHUNKING", "8BITMIME", "SIZE"} <= names2
        assert c.cmd("QUIT")[0] == 221
    with RawSMTP(gw.smtps_port, implicit_tls=True) as c:
        assert c.greeting[0] == 220
        kw3 = c.ehlo()
        assert "STARTTLS" not in {k.split()[0].upper() for k in kw3}, kw3
        assert "CHUNKING" in {k.split()[0].upper() for k in kw3}


def test_helo_and_rset_noop(gw):
    with RawSMTP(gw.smtp_port) as c:
        assert c.cmd("HELO client.test")[0] == 250
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("MAIL FROM:<a@contoso.example>")[0] == 250
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("MAIL FROM:<a@contoso.example>")[0] == 250  # RSET cleared the transaction


# ----------------------------------------------------------------- BDAT / CHUNKING


def test_bdat_chunks(gw):
    m = gw.create_mailbox()
    part1 = make_message(subject="bdat", body="")
    part2 = b".leading dot is not stuffed in BDAT\r\n..two dots\r\n.\r\nend\r\n"
    with RawSMTP(gw.smtp_port) as c:
        assert "CHUNKING" in {k.split()[0].upper() for k in c.ehlo()}
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        c.send(f"BDAT {len(part1)}\r\n".encode() + part1)
        code, text = c.reply()
        assert code == 250, text
        c.send(f"BDAT {len(part2)} LAST\r\n".encode() + part2)
        code, text = c.reply()
        assert code == 250, text
        # a second transaction on the same session, ending with BDAT 0 LAST
        assert c.cmd("MAIL FROM:<>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        msg2 = make_message(subject="second")
        c.send(f"BDAT {len(msg2)}\r\n".encode() + msg2)
        assert c.reply()[0] == 250
        assert c.cmd("BDAT 0 LAST")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    got = pop3_fetch_all(gw, m)
    assert [strip_received(x) for _, x in got] == [part1 + part2, msg2]


def test_bdat_pipelined(gw):
    m = gw.create_mailbox()
    m2 = gw.create_mailbox()
    a = make_message(subject="pipelined bdat", body="x" * 5000 + "\r\n")
    b = b"tail without final newline"
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        c.send(b"MAIL FROM:<journal@contoso.example>\r\n"
               + f"RCPT TO:<{m['address']}>\r\nRCPT TO:<{m2['address']}>\r\n".encode()
               + f"BDAT {len(a)}\r\n".encode() + a
               + f"BDAT {len(b)} LAST\r\n".encode() + b
               + b"NOOP\r\n")
        codes = [c.reply()[0] for _ in range(6)]
        assert codes == [250, 250, 250, 250, 250, 250], codes
    for mbx in (m, m2):
        got = pop3_fetch_all(gw, mbx)
        assert len(got) == 1
        # POP3 must terminate the last line; the stored bytes themselves are a + b
        # stored bytes are a + b; POP3 has to terminate the unterminated last line
        assert strip_received(got[0][1]) == a + b + b"\r\n"


def test_pipelined_data(gw):
    m = gw.create_mailbox()
    msg = make_message(subject="pipelined data")
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<journal@contoso.example>\r\n"
               + f"RCPT TO:<{m['address']}>\r\nRCPT TO:<nobody@{HOSTNAME}>\r\nDATA\r\n".encode())
        codes = [c.reply()[0] for _ in range(4)]
        assert codes == [250, 250, 550, 354], codes
        c.send(dot_stuff(msg) + b".\r\nQUIT\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 221
    assert strip_received(only_message(gw, m)) == msg


# ----------------------------------------------------------------- dot stuffing


def test_dot_stuffing_roundtrip(gw):
    m = gw.create_mailbox()
    body = ".\r\n..\r\n...\r\n.leading\r\n..two\r\nmiddle . line\r\n. space\r\n.\r\nlast\r\n"
    msg = make_message(subject="dots", body=body)
    send_smtp(gw, m["address"], msg)  # smtplib does the stuffing
    # and a raw client stuffing by hand
    send_raw_data(gw, m["address"], msg)
    got = pop3_fetch_all(gw, m)
    assert [strip_received(x) for _, x in got] == [msg, msg]


# ----------------------------------------------------------------- error answers


def test_malformed_commands_keep_session_usable(gw):
    m = gw.create_mailbox()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        for bad in ("FROBNICATE", "MAIL", "MAIL FROM", "MAIL FROM:<unterminated",
                    "MAIL FROM:<a@b> <c@d>", "HELO", "EHLO", "", "\x00\x01\x02",
                    "RCPT TO <x@y>", "BDAT", "BDAT notanumber", "DATA extra"):
            code, text = c.cmd(bad)
            assert 500 <= code < 600, (bad, code, text)
            # ENHANCEDSTATUSCODES is advertised: every reply carries a matching x.y.z
            assert re.match(r"^5\d\d 5\.\d{1,3}\.\d{1,3} ", text), (bad, text)
            assert c.cmd("NOOP")[0] == 250, bad
        # unsupported MAIL parameter
        code, text = c.cmd("MAIL FROM:<a@contoso.example> FROBNICATE=yes")
        assert code == 555 and "5.5.4" in text, text
        # session still works for a real message
        msg = make_message(subject="after garbage")
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(msg) + b".\r\n")
        assert c.reply()[0] == 250
    assert strip_received(only_message(gw, m)) == msg


def test_huge_line_without_newline(gw):
    """10 MB without a newline: answered 500 5.5.2 once the line limit is passed
    (without waiting for a newline that may never come), bounded memory, server healthy."""
    m = gw.create_mailbox()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        time.sleep(0.2)
        rss_before = gw.rss_kb()
        replies = []

        def reader():
            try:
                replies.append(c.reply())
            except Exception as e:  # noqa: BLE001
                replies.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        chunk = b"A" * (1 << 20)
        try:
            for _ in range(10):
                c.sock.sendall(chunk)
        except OSError:
            pass  # the server may close the connection once it has answered
        t.join(15)
        reply_without_newline = replies[0] if replies else None
        time.sleep(0.5)
        rss_after = gw.rss_kb()
        if reply_without_newline is None:
            # diagnostics: does the server answer once the line is terminated?
            with contextlib.suppress(OSError):
                c.sock.sendall(b"\r\n")
            t.join(5)
        after_crlf = replies[0] if replies else "nothing"
    assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)
    # server still healthy
    msg = make_message(subject="still alive")
    send_smtp(gw, m["address"], msg)
    assert strip_received(only_message(gw, m)) == msg
    assert reply_without_newline is not None, (
        "no reply within 15 s to a 10 MB line without newline; "
        f"after sending CRLF the reply was: {after_crlf!r}")
    assert not isinstance(reply_without_newline, Exception), \
        f"no reply before close: {reply_without_newline!r}"
    assert reply_without_newline[0] == 500 and "5.5.2" in reply_without_newline[1], \
        reply_without_newline


def test_bad_sequence(gw):
    m = gw.create_mailbox()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        for cmd in ("RCPT TO:<%s>" % m["address"], "DATA"):
            code, text = c.cmd(cmd)
            assert code == 503 and "5.5.1" in text, (cmd, text)
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 503, text
        # DATA after MAIL without any accepted RCPT: RFC 5321 3.3 allows 503 or 554
        code, text = c.cmd("DATA")
        assert code in (503, 554) and "5.5.1" in text, text
        assert c.cmd("RSET")[0] == 250
        # BDAT without a transaction: chunk is consumed, answered 503, session usable
        c.send(b"BDAT 5 LAST\r\nhello")
        code, text = c.reply()
        assert code == 503, text
        assert c.cmd("NOOP")[0] == 250
    with RawSMTP(gw.smtp_port) as c:
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 503, f"MAIL before EHLO/HELO: {text}"
    assert pop3_stat(gw, m)[0] == 0


def test_recipient_errors(gw):
    m = gw.create_mailbox()
    s = gw.create_mailbox()
    gw.cli("mailbox", "suspend", s["id"])
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        cases = [
            (f"mbx-{'0' * 32}@{HOSTNAME}", 550, "5.1.1"),
            (f"postmaster@{HOSTNAME}", 550, "5.1.1"),
            (f"{m['id']}@other.example", 550, "5.7.1"),
            ("someone@contoso.example", 550, "5.7.1"),
            (s["address"], 450, "4.2.1"),
        ]
        for addr, want, enh in cases:
            code, text = c.cmd(f"RCPT TO:<{addr}>")
            assert code == want and enh in text, (addr, code, text)
        # case-insensitive match
        code, text = c.cmd(f"RCPT TO:<{m['id'].upper()}@{HOSTNAME.upper()}>")
        assert code == 250, text
        assert c.cmd("DATA")[0] == 354
        msg = make_message(subject="mixed case rcpt")
        c.send(dot_stuff(msg) + b".\r\n")
        assert c.reply()[0] == 250
    assert strip_received(only_message(gw, m)) == msg


def test_too_many_recipients(make_gw):
    gw = make_gw(smtp={"max_recipients": 2})
    boxes = [gw.create_mailbox() for _ in range(3)]
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{boxes[0]['address']}>")[0] == 250
        assert c.cmd(f"RCPT TO:<{boxes[1]['address']}>")[0] == 250
        code, text = c.cmd(f"RCPT TO:<{boxes[2]['address']}>")
        assert code == 452 and "4.5.3" in text, text


def test_message_too_big(make_gw):
    gw = make_gw(smtp={"max_message_size": 10000})
    m = gw.create_mailbox()
    big = make_message(subject="big", body=("y" * 76 + "\r\n") * 300)  # ~24 KB
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        code, text = c.cmd("MAIL FROM:<journal@contoso.example> SIZE=20000")
        assert code == 552 and "5.3.4" in text, text
        # undeclared size: rejected at end of data
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(big) + b".\r\n")
        code, text = c.reply()
        assert code == 552 and "5.3.4" in text, text
        # BDAT too
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        c.send(f"BDAT {len(big)} LAST\r\n".encode() + big)
        code, text = c.reply()
        assert code == 552 and "5.3.4" in text, text
        # the session is still in sync and usable
        small = make_message(subject="small enough")
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(small) + b".\r\n")
        assert c.reply()[0] == 250
    assert strip_received(only_message(gw, m)) == small
    wait_until(lambda: gw.tmp_files() == [], 5, what="empty data/tmp")


@pytest.mark.parametrize("mode", ["data", "bdat"])
def test_disconnect_mid_message(gw, mode):
    m = gw.create_mailbox()
    msg = make_message(subject="cut", body=("z" * 70 + "\r\n") * 2000)
    c = RawSMTP(gw.smtp_port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
    assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
    if mode == "data":
        assert c.cmd("DATA")[0] == 354
        c.send(msg[: len(msg) // 2])
    else:
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg[: len(msg) // 2])
    time.sleep(0.3)
    c.close()
    wait_until(lambda: gw.tmp_files() == [], 10, what="data/tmp to be empty after disconnect")
    assert pop3_stat(gw, m)[0] == 0
    assert gw.show(m["id"])["messages"] == 0


def test_require_tls(make_gw):
    gw = make_gw(smtp={"require_tls": True})
    m = gw.create_mailbox()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 530 and "5.7.0" in text, text
        c.starttls()
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
    msg = make_message(subject="over tls")
    send_smtp(gw, m["address"], msg, tls="starttls")
    send_smtp(gw, m["address"], msg, tls="implicit")
    assert len(pop3_fetch_all(gw, m)) == 2


def test_allowed_networks_reject(make_gw):
    gw = make_gw(smtp={"allowed_networks": ["10.0.0.0/8"]})
    c = RawSMTP(gw.smtp_port, greet=False)
    try:
        code, text = c.reply()
        assert code == 554 and "5.7.1" in text, text
        assert c.closed_by_server(10), "connection must be closed after 554"
    finally:
        c.close()
    # implicit TLS port: either a 554 after the handshake or no session at all, never a 220
    try:
        c = RawSMTP(gw.smtps_port, implicit_tls=True, greet=False)
    except (OSError, ssl.SSLError):
        return
    try:
        code, text = c.reply()
        assert code == 554, text
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        c.close()


def test_allowed_networks_accept(make_gw):
    gw = make_gw(smtp={"allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    m = gw.create_mailbox()
    msg = make_message(subject="allowed")
    send_smtp(gw, m["address"], msg)
    assert strip_received(only_message(gw, m)) == msg


def test_max_connections(make_gw):
    gw = make_gw(smtp={"max_connections": 2})
    c1 = RawSMTP(gw.smtp_port)
    c2 = RawSMTP(gw.smtp_port)
    try:
        assert c1.greeting[0] == 220 and c2.greeting[0] == 220
        c3 = RawSMTP(gw.smtp_port, greet=False)
        try:
            code, text = c3.reply()
            assert code == 421 and "4.3.2" in text, text
            assert c3.closed_by_server(10)
        finally:
            c3.close()
        assert c1.cmd("NOOP")[0] == 250
        c1.cmd("QUIT")
    finally:
        c1.close()

    def fourth_ok():
        with RawSMTP(gw.smtp_port) as c4:
            return c4.greeting[0] == 220

    wait_until(fourth_ok, 10, interval=0.2, what="a slot to free up")
    c2.close()


def test_low_disk_is_transient(make_gw):
    gw = make_gw(spool={"min_free_bytes": 10**18})
    m = gw.create_mailbox()
    replies = []
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        for cmd in ("MAIL FROM:<journal@contoso.example>", f"RCPT TO:<{m['address']}>", "DATA"):
            code, text = c.cmd(cmd)
            replies.append((cmd, code, text))
            if code != 250:
                break
    assert all(code < 500 for _, code, _ in replies), replies
    first_bad = [(cmd, code, text) for cmd, code, text in replies if code != 250]
    assert first_bad, f"message was not refused: {replies}"
    cmd, code, text = first_bad[0]
    assert code == 452 and "4.3.1" in text, replies
    # smtplib (which declares SIZE) sees a temporary failure, never a permanent one
    with pytest.raises(smtplib.SMTPException) as ei:
        send_smtp(gw, m["address"], make_message())
    codes = smtp_exc_codes(ei.value)
    assert codes and all(400 <= c < 500 for c in codes), ei.value
    assert pop3_stat(gw, m)[0] == 0


def test_full_disk_tmpfs(tmpfs_dir, make_gw):
    gw = make_gw(data_dir=tmpfs_dir / "data")
    m = gw.create_mailbox()
    st = os.statvfs(tmpfs_dir)
    free = st.f_bavail * st.f_frsize
    first_size = min(3 * 1024 * 1024, free - 300 * 1024)
    assert first_size > 1024 * 1024, f"only {free} bytes free on the 4 MB tmpfs after setup"
    line = b"f" * 98 + b"\r\n"
    first = make_message(subject="fits", body=b"") + line * (first_size // len(line))
    send_smtp(gw, m["address"], first, tls=None)
    second = make_message(subject="does not fit", body=b"") + line * (3 * 1024 * 1024 // len(line))
    replies = []
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        for cmd in ("MAIL FROM:<journal@contoso.example>", f"RCPT TO:<{m['address']}>", "DATA"):
            code, text = c.cmd(cmd)
            replies.append((cmd, code, text))
            if code not in (250, 354):
                break
        else:
            try:
                c.send(dot_stuff(second) + b".\r\n")
                code, text = c.reply()
            except OSError as e:
                code, text = 0, repr(e)
            replies.append(("<end of data>", code, text))
    print(f"tmpfs free after setup: {free}; first message {len(first)} bytes; replies: {replies}")
    final = replies[-1]
    assert 400 <= final[1] < 500, f"second message must get a 4xx: {replies}"
    assert all(code < 500 for _, code, _ in replies), replies
    wait_until(lambda: gw.tmp_files() == [], 10, what="data/tmp cleaned after ENOSPC")
    # a declared SIZE larger than the free space is refused up front, transiently
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        code, text = c.cmd("MAIL FROM:<journal@contoso.example> SIZE=3500000")
        assert code == 452 and "4.3.1" in text, text
    got = pop3_fetch_all(gw, m)
    assert len(got) == 1
    assert strip_received(got[0][1]) == first
    gw.stop()


# ----------------------------------------------------------------- robustness / security


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"],
                         ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF"])
def test_no_smtp_smuggling(gw, fake_end):
    """Only <CRLF>.<CRLF> ends DATA: a bare-LF/CR 'end' must not start a second message.
    The message (properly dot-stuffed by the client) is stored exactly, or refused."""
    m = gw.create_mailbox()
    head = make_message(subject="smuggling carrier", body="carrier body\r\n")
    smuggled = (b"MAIL FROM:<ceo@contoso.example>" + fake_end[-1:]
                + f"RCPT TO:<{m['address']}>".encode() + fake_end[-1:]
                + b"DATA" + fake_end[-1:] + b"Subject: smuggled" + fake_end[-1:] + fake_end[-1:]
                + b"smuggled body")
    payload = head + b"tail" + fake_end + smuggled + b"\r\n"
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        noop_reply = c.cmd("NOOP")
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(payload) + b".\r\nNOOP\r\n")
        code, text = c.reply()
        assert code == 250 or 500 <= code < 600, text
        assert c.reply() == noop_reply, "the reply after the message is not NOOP's: smuggled commands ran"
        assert c.cmd("QUIT")[0] == 221
    # the server may also stuff dots after a bare LF on output (protects LF-splitting clients)
    got = pop3_retr_raw(gw, m, lf_lines=True)
    if code == 250:
        assert len(got) == 1, f"{len(got)} messages stored: the fake end split the message"
        assert strip_received(got[0]) == payload
    else:
        assert got == []


def test_starttls_command_injection(gw):
    """Plaintext pipelined after STARTTLS must not be executed inside the TLS session."""
    m = gw.create_mailbox()
    c = RawSMTP(gw.smtp_port)
    try:
        c.ehlo()
        c.send(f"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<{m['address']}>\r\n"
               .encode())
        code, text = c.reply()
        assert code == 220, text
        c.buf = b""  # whatever the client buffered is its own problem
        try:
            c.sock = unverified_ctx().wrap_socket(c.sock, server_hostname=HOSTNAME)
        except (ssl.SSLError, OSError):
            return  # the server dropped the connection: safe
        try:
            kw = c.ehlo()
        except (ConnectionError, OSError, AssertionError) as e:
            if isinstance(e, AssertionError):
                raise AssertionError(f"first reply inside TLS is not the EHLO reply: {e}")
            return
        assert "PIPELINING" in {k.split()[0].upper() for k in kw}
        # if the injected MAIL had run, a second MAIL would be a bad sequence
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 250, f"injected MAIL FROM was executed: {text}"
    finally:
        c.close()


def test_size_limit_boundary(make_gw):
    limit = 10000
    gw = make_gw(smtp={"max_message_size": limit})
    m = gw.create_mailbox()
    base = make_message(subject="boundary", body="")
    exact = base + b"b" * (limit - len(base) - 2) + b"\r\n"
    over = base + b"b" * (limit - len(base) - 1) + b"\r\n"
    assert len(exact) == limit and len(over) == limit + 1
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<journal@contoso.example> SIZE={limit}")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(exact + b".\r\n")
        code, text = c.reply()
        assert code == 250, f"a message of exactly max_message_size octets: {text}"
        code, text = c.cmd(f"MAIL FROM:<journal@contoso.example> SIZE={limit + 1}")
        assert code == 552 and "5.3.4" in text, text
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        c.send(f"BDAT {len(over)} LAST\r\n".encode() + over)
        code, text = c.reply()
        assert code == 552 and "5.3.4" in text, text
    assert [strip_received(x) for _, x in pop3_fetch_all(gw, m)] == [exact]


def test_long_line_in_data_keeps_session_in_sync(gw):
    m = gw.create_mailbox()
    msg = make_message(subject="long line", body=b"Q" * 20000 + b"\r\nafter\r\n")
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(msg + b".\r\n")
        code, text = c.reply()
        assert code == 250 or 500 <= code < 600, text
        assert c.cmd("NOOP")[0] == 250, "session out of sync after a long DATA line"
    got = pop3_fetch_all(gw, m)
    if code == 250:
        assert [strip_received(x) for _, x in got] == [msg]
    else:
        assert got == []


def test_idle_timeout(make_gw):
    gw = make_gw(smtp={"timeout_secs": 2})
    m = gw.create_mailbox()
    t0 = time.monotonic()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.closed_by_server(15), "idle SMTP session not closed"
    assert time.monotonic() - t0 < 12
    # stalled in the middle of DATA: closed, nothing stored, no temp file left
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(make_message(subject="stalled"))
        assert c.closed_by_server(15), "stalled DATA not timed out"
    wait_until(lambda: gw.tmp_files() == [], 5, what="data/tmp cleaned after timeout")
    assert pop3_stat(gw, m)[0] == 0


def test_sigterm_during_data(gw):
    """Shutdown lets a delivery in progress finish (250, stored) or refuses it with a
    4xx (not stored); never a 250 for a lost message."""
    m = gw.create_mailbox()
    msg = make_message(subject="in flight", body=("w" * 70 + "\r\n") * 3000)
    c = RawSMTP(gw.smtp_port)
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(msg[: len(msg) // 2])
        time.sleep(0.2)
        gw.proc.send_signal(15)
        time.sleep(0.5)
        # while shutting down, a new session is refused: 421 4.3.2 or no listener at all
        try:
            with RawSMTP(gw.smtp_port, greet=False, timeout=10) as late:
                late_reply = late.reply()
        except (ConnectionError, OSError) as e:
            late_reply = (0, repr(e))
        assert late_reply[0] in (0, 421), f"new session during shutdown: {late_reply}"
        if late_reply[0] == 421:
            assert "4.3.2" in late_reply[1], late_reply
        try:
            c.send(msg[len(msg) // 2:] + b".\r\n")
            code, text = c.reply()
        except (ConnectionError, OSError) as e:
            code, text = 0, repr(e)
    finally:
        c.close()
    print(f"reply to the in-flight message after SIGTERM: {code} {text}")
    assert code == 250 or 400 <= code < 500 or code == 0, text
    gw.proc.wait(20)
    gw.start()
    got = pop3_fetch_all(gw, m)
    if code == 250:
        assert [strip_received(x) for _, x in got] == [msg]
    else:
        assert got == []
    assert gw.tmp_files() == []


def test_bdat_then_rset_or_data(gw):
    m = gw.create_mailbox()
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        part = make_message(subject="aborted chunked message")
        c.send(f"BDAT {len(part)}\r\n".encode() + part)
        assert c.reply()[0] == 250
        assert c.cmd("RSET")[0] == 250
        c.send(b"BDAT 3 LAST\r\nabc")
        code, text = c.reply()
        assert code == 503, f"BDAT after RSET without MAIL: {text}"
        # DATA in the middle of a BDAT transaction is a bad sequence
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{m['address']}>")[0] == 250
        c.send(f"BDAT {len(part)}\r\n".encode() + part)
        assert c.reply()[0] == 250
        code, text = c.cmd("DATA")
        assert code == 503, text
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("NOOP")[0] == 250
    wait_until(lambda: gw.tmp_files() == [], 5, what="data/tmp cleaned after RSET")
    assert pop3_stat(gw, m)[0] == 0


def test_starttls_twice_and_unsupported_body(gw):
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        code, text = c.cmd("STARTTLS")
        assert 500 <= code < 600, text
        code, text = c.cmd("MAIL FROM:<journal@contoso.example> BODY=BINARYMIME")
        assert 500 <= code < 600, text
        code, text = c.cmd("MAIL FROM:<journal@contoso.example> BODY=7BIT SIZE=100")
        assert code == 250, text
