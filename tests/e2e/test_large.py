"""One 150 MB journal report: streamed in over SMTP, streamed out over POP3, bounded RSS."""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from jgharness import RawPOP3, RawSMTP, make_message

LINE_LEN = 1000  # 998 octets + CRLF
LINES_PER_CHUNK = 1024
CHUNK_COUNT = 153  # 153 * 1,024,000 = 156,672,000 octets of body (~150 MiB)
LARGE_TIMEOUT = 280


def chunks(header: bytes):
    """Yield the message in ~1 MB pieces; no line starts with '.', so no stuffing."""
    yield header
    base = [(b"L%06d " % k) + bytes([0x41 + (k % 26)]) * (LINE_LEN - 10) + b"\r\n"
            for k in range(LINES_PER_CHUNK)]
    for i in range(CHUNK_COUNT):
        first = (b"C%06d " % i) + b"#" * (LINE_LEN - 10) + b"\r\n"
        yield first + b"".join(base[1:])


class StreamingPOP3(RawPOP3):
    """RawPOP3 (POP3S) that hashes a RETR while it streams in."""

    def retr_hash_without_received(self, n: int):
        """RETR n, streaming: drop the first header field, unstuff, hash the rest."""
        resp = self.cmd(f"RETR {n}")
        assert resp.startswith(b"+OK"), resp
        h = hashlib.sha256()
        total = 0
        state = "first"
        buf, self.buf = self.buf, b""
        while True:
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for ln in lines:
                if ln == b".":
                    assert buf == b"", "data after the end of RETR"
                    return h.hexdigest(), total
                if ln.startswith(b"."):
                    ln = ln[1:]
                if state == "first":
                    assert ln[:9].lower() == b"received:", ln[:200]
                    state = "cont"
                    continue
                if state == "cont":
                    if ln[:1] in (b" ", b"\t"):
                        continue
                    state = "body"
                h.update(ln)
                h.update(b"\r\n")
                total += len(ln) + 2
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("connection closed during RETR")
            buf += data


@pytest.mark.slow
def test_150mb_message_streams_with_bounded_memory(gw):
    mbx = gw.create_mailbox()
    header = make_message(subject="150 MB journal report", body=b"")
    sha = hashlib.sha256()
    size = 0
    with RawSMTP(gw.smtp_port, timeout=LARGE_TIMEOUT) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        time.sleep(0.3)
        rss_before = gw.rss_kb()
        hwm_before = gw.peak_rss_kb()
        assert c.cmd("MAIL FROM:<journal@contoso.example> BODY=8BITMIME")[0] == 250
        assert c.cmd(f"RCPT TO:<{mbx['address']}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        t0 = time.monotonic()
        for piece in chunks(header):
            sha.update(piece)
            size += len(piece)
            c.send(piece)
        c.send(b".\r\n")
        code, text = c.reply()
        t_in = time.monotonic() - t0
        assert code == 250, text
        time.sleep(0.5)
        rss_after = gw.rss_kb()
        hwm_after = gw.peak_rss_kb()
        c.cmd("QUIT")
    assert size > 150 * 1024 * 1024 - 2 * 1024 * 1024
    print(f"\n150MB intake: {size} bytes in {t_in:.1f}s; VmRSS {rss_before} -> {rss_after} kB; "
          f"VmHWM {hwm_before} -> {hwm_after} kB")

    p = StreamingPOP3(gw.pop3s_port, LARGE_TIMEOUT)
    try:
        assert p.cmd(f"USER {mbx['id']}").startswith(b"+OK")
        assert p.cmd(f"PASS {mbx['password']}").startswith(b"+OK")
        stat = p.cmd("STAT").split()
        assert stat[0] == b"+OK" and stat[1] == b"1", stat
        assert int(stat[2]) > size, "STAT size must include the Received header"
        t0 = time.monotonic()
        digest, got_size = p.retr_hash_without_received(1)
        t_out = time.monotonic() - t0
        rss_out = gw.rss_kb()
        hwm_out = gw.peak_rss_kb()
        assert p.cmd("QUIT").startswith(b"+OK")
    finally:
        p.close()
    print(f"150MB retrieval: {got_size} bytes in {t_out:.1f}s; VmRSS {rss_out} kB; VmHWM {hwm_out} kB")

    assert got_size == size
    assert digest == sha.hexdigest()
    assert rss_after - rss_before < 30 * 1024, f"VmRSS grew {rss_after - rss_before} kB on intake"
    assert rss_out - rss_before < 30 * 1024, f"VmRSS grew {rss_out - rss_before} kB on retrieval"
    # never the whole message in RAM (design: memory is bounded, messages stream)
    assert hwm_out - hwm_before < 100 * 1024, f"VmHWM grew {hwm_out - hwm_before} kB"
    # free the ~150 MB spool file now (kept for inspection when an assertion above fails)
    gw.stop()
    shutil.rmtree(gw.data_dir, ignore_errors=True)
