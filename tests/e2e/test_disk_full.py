"""A full disk must not wedge the gateway (issue 10). On a real 48 MB tmpfs with the reserve
at 0, SMTP fills the disk until it refuses (4xx, never 5xx); then the archiver must still log
in, see every acknowledged message, download and delete them all, and the gateway must take
mail again without a restart. Repeated with different message sizes so that both the message
file and the index write are the ones that hit ENOSPC."""

from __future__ import annotations

import os
import smtplib
import threading

from jgharness import (
    build_message, pop3_fetch_all, pop3_stat, send_smtp, strip_received, wait_until,
)


def fill_until_refused(gw, mbx, size: int, senders=4):
    """Sends messages of about `size` bytes from `senders` threads until each was refused
    twice. Returns ({marker: message} acknowledged, [refusal codes])."""
    acked: dict[str, bytes] = {}
    codes: list[int] = []
    lock = threading.Lock()

    def sender(k):
        refusals = 0
        i = 0
        while refusals < 2 and i < 5000:
            i += 1
            marker = f"full-{k}-{i}-{os.urandom(4).hex()}"
            body = (b"y" * 98 + b"\r\n") * max(1, size // 100)
            msg = build_message(subject=marker, body=body)
            try:
                send_smtp(gw, mbx["address"], msg, tls=None)
                with lock:
                    acked[marker] = msg
            except smtplib.SMTPResponseException as e:
                with lock:
                    codes.append(e.smtp_code)
                refusals += 1
            except smtplib.SMTPRecipientsRefused as e:
                with lock:
                    codes.extend(code for code, _ in e.recipients.values())
                refusals += 1
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    codes.append(getattr(e, "smtp_code", 0))
                refusals += 1

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acked, codes


def test_collection_and_deletion_work_on_a_full_disk(tmpfs48, make_gw):
    gw = make_gw(data_dir=tmpfs48 / "data")
    mbx = gw.create_mailbox()
    for cycle, size in enumerate([300_000, 20_000, 1_000_000, 2_000, 150_000, 60_000]):
        acked, codes = fill_until_refused(gw, mbx, size)
        st = os.statvfs(tmpfs48)
        print(f"cycle {cycle}: {len(acked)} acknowledged at ~{size} B, refusals {codes}, "
              f"{st.f_bavail * st.f_frsize} B free")
        assert acked, "nothing was accepted before the disk filled"
        assert codes and all(400 <= c < 500 for c in codes), codes
        # the disk is full: the archiver logs in, sees and downloads every acknowledged message
        count, _ = pop3_stat(gw, mbx)
        assert count == len(acked), (count, len(acked), gw.log_tail())
        got = pop3_fetch_all(gw, mbx, delete=True)
        by_subject = {}
        for _, raw in got:
            body = strip_received(raw)
            subject = body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            by_subject[subject] = body
        assert set(by_subject) == set(acked), "acknowledged messages missing or extra"
        assert all(by_subject[m] == acked[m] for m in acked), "a message changed"
        # every DELE took effect, and the gateway takes mail again without a restart
        assert pop3_stat(gw, mbx)[0] == 0, gw.log_tail()
        wait_until(lambda: gw.tmp_files() == [], 10, what="data/tmp cleaned")
        probe = build_message(subject=f"after-{cycle}")
        send_smtp(gw, mbx["address"], probe, tls=None)
        again = pop3_fetch_all(gw, mbx, delete=True)
        assert [strip_received(r) for _, r in again] == [probe]
    assert gw.running
    log = gw.log_text()
    print(f"index write failures: {log.count('index update failed') + log.count('index failed')}, "
          f"reopens: {log.count('index reopened')}, repairs from the folder: "
          f"{log.count('reading the mailbox from its folder')}")
    rc, out, err = gw.cli_raw("check")
    assert rc == 0, (out, err)
