"""ACME: certificates from Pebble (Debian's `pebble` package) with live renewal.

Pebble and pebble-challtestsrv run on loopback per test. challtestsrv is only Pebble's DNS
server (every name resolves to 127.0.0.1); Pebble's `httpPort` points at the gateway's HTTP-01
listener and its `tlsPort` at the gateway's SMTPS listener, so validation really connects to
the gateway. Pebble's own HTTPS certificate is made here with openssl (a throw-away CA whose
root the gateway gets as `acme.ca_file`). The served certificates are verified with Python's
ssl against Pebble's `/roots/0`.
"""

from __future__ import annotations

import contextlib
import json
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from jgharness import HOSTNAME, RawSMTP, free_port, to_toml, unverified_ctx, wait_until

_PEBBLE_MISSING = shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None
# Under CI (tests/run.sh installs pebble) a missing Pebble is a failed install, not a skip.
assert not (_PEBBLE_MISSING and os.environ.get("CI")), "pebble is not installed (tests/run.sh installs it)"
pytestmark = pytest.mark.skipif(_PEBBLE_MISSING, reason="pebble not installed (apt-get install pebble)")

ISSUE_TIMEOUT = 60


# --------------------------------------------------------------------------- Pebble


def _openssl(*args, cwd):
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()


def make_pebble_tls(d: Path) -> Path:
    """A CA and a certificate for 127.0.0.1/localhost signed by it; returns the CA file."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=journalgate test CA for pebble", cwd=d)
    _openssl("req", *ec, "-keyout", "pebble-key.pem", "-out", "pebble.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "basicConstraints=critical,CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "pebble.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "pebble-cert.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)
    return d / "ca.pem"


class Pebble:
    """pebble + pebble-challtestsrv (as DNS) on loopback, killed in stop()."""

    def __init__(self, base: Path, http_port: int, tls_port: int, env: dict | None = None):
        self.dir = base / "pebble"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = make_pebble_tls(self.dir)
        self.port = free_port()
        self.mgmt_port = free_port()
        self.dns_port = free_port()
        self.challtest_mgmt_port = free_port()
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        cfg = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.dir / "pebble-cert.pem"),
            "privateKey": str(self.dir / "pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        (self.dir / "pebble-config.json").write_text(json.dumps(cfg))
        self.env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                    "PEBBLE_AUTHZREUSE": "0", **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.log_path = self.dir / "pebble.log"

    def _spawn(self, args, env=None):
        log = open(self.log_path, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, cwd=self.dir)
        log.close()
        self.procs.append(p)
        return p

    def start(self):
        self._spawn(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                     "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                     "-tlsalpn01", "", "-management", f"127.0.0.1:{self.challtest_mgmt_port}"])
        self._spawn(["pebble", "-config", str(self.dir / "pebble-config.json"),
                     "-dnsserver", f"127.0.0.1:{self.dns_port}"], env=self.env)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))

        def up():
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise AssertionError(f"pebble exited\n{self.log()}")
            try:
                with urllib.request.urlopen(self.directory, context=ctx, timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(up, timeout=20, what="pebble directory")
        return self

    def get(self, path: str) -> str:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.mgmt_port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.read().decode()

    def client_context(self) -> ssl.SSLContext:
        """Trusts only Pebble's issuing root; checks the host name."""
        ctx = ssl.create_default_context(cadata=self.get("/roots/0"))
        ctx.check_hostname = True
        return ctx

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture
def acme_gw(make_gw, tmp_path, request):
    """acme_gw(challenge=..., pebble_http=..., pebble_tls=..., env=...) -> (gw, pebble).

    pebble_http/pebble_tls: 'gw' to point Pebble at the gateway's HTTP-01 listener / SMTPS
    listener, 'dead' for a closed port. The gateway is started after Pebble."""
    pebbles: list[Pebble] = []

    def factory(**kw):
        # Ports come from free_port() (bind 0, close), so another process can grab one before
        # Pebble or the gateway binds it: start again on fresh ports when that happens.
        for attempt in range(3):
            try:
                return start_pair(**kw)
            except AssertionError as e:
                if "address already in use" not in str(e).lower() or attempt == 2:
                    raise
                print(f"port taken meanwhile, retrying: {str(e)[-200:]}")

    def start_pair(challenge="http-01", pebble_http="gw", pebble_tls="gw", env=None,
                   directory=None, start=True):
        http_listen = free_port()
        dead = free_port()
        overrides = {
            "imap": {"listen_tls": [f"127.0.0.1:{free_port()}"]},
            "tls": {"source": "acme"},
            "acme": {"challenge": challenge, "http_listen": f"127.0.0.1:{http_listen}",
                     "renew_before_days": 30},
        }
        g = make_gw(overrides, start=False)
        pb = Pebble(tmp_path / f"pb{len(pebbles)}",
                    http_port=http_listen if pebble_http == "gw" else dead,
                    tls_port=g.smtps_port if pebble_tls == "gw" else dead, env=env)
        pebbles.append(pb)
        g.config["acme"].update({"directory": directory or pb.directory,
                                 "ca_file": str(pb.ca_file)})
        g.config_path.write_text(to_toml(g.config))
        if directory is None:
            pb.start()
        if start:
            try:
                g.start()
            except AssertionError:
                pb.stop()
                raise
        return g, pb

    yield factory
    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    for pb in pebbles:
        pb.stop()
        if failed:
            print(f"\n##### pebble log {pb.dir}\n{pb.log()[-6000:]}")


def cert_status(gw) -> dict:
    return gw.cli("cert", "status")


def wait_issued(gw, timeout=ISSUE_TIMEOUT) -> dict:
    def issued():
        st = cert_status(gw)
        return st if not st["self_signed"] and "Pebble" in st["issuer"] else None
    return wait_until(issued, timeout=timeout, interval=0.3, what="an ACME certificate")


# --------------------------------------------------------------------------- clients


def smtps_cert(port: int, ctx: ssl.SSLContext, alpn=None) -> bytes:
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
            return t.getpeercert(binary_form=True)


def smtp_starttls_cert(gw, ctx: ssl.SSLContext) -> bytes:
    s = smtplib.SMTP("127.0.0.1", gw.smtp_port, local_hostname="client.test", timeout=30)
    try:
        s._host = HOSTNAME  # the name smtplib verifies after STARTTLS
        s.ehlo()
        code, _ = s.starttls(context=ctx)
        assert code == 220
        s.ehlo()
        return s.sock.getpeercert(binary_form=True)
    finally:
        with contextlib.suppress(Exception):
            s.quit()


def pop3_stls_cert(gw, ctx: ssl.SSLContext) -> bytes:
    p = poplib.POP3("127.0.0.1", gw.pop3_port, timeout=30)
    try:
        p.host = HOSTNAME  # the name poplib verifies after STLS
        p.stls(context=ctx)
        return p.sock.getpeercert(binary_form=True)
    finally:
        with contextlib.suppress(Exception):
            p.quit()


def pop3s_cert(gw, ctx: ssl.SSLContext, alpn=None) -> bytes:
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", gw.pop3s_port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
            greeting = t.recv(512)
            assert greeting.startswith(b"+OK"), greeting
            return t.getpeercert(binary_form=True)


def imaps_cert(gw, ctx: ssl.SSLContext) -> bytes:
    port = int(gw.config["imap"]["listen_tls"][0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
            greeting = t.recv(512)
            assert greeting.startswith(b"* OK"), greeting
            return t.getpeercert(binary_form=True)


def verify_everywhere(gw, pb: Pebble) -> bytes:
    """The served certificate chains to Pebble's root for the host name on every listener;
    returns it (DER)."""
    der = smtp_starttls_cert(gw, pb.client_context())
    assert pop3_stls_cert(gw, pb.client_context()) == der
    assert pop3s_cert(gw, pb.client_context()) == der
    assert smtps_cert(gw.smtps_port, pb.client_context()) == der
    assert imaps_cert(gw, pb.client_context()) == der
    return der


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- tests


def test_http01_issuance_served_on_every_listener(acme_gw):
    gw, pb = acme_gw(challenge="http-01", pebble_tls="dead")
    st = wait_issued(gw)
    assert st["source"] == "acme"
    assert st["names"] == [HOSTNAME]
    assert st["days_left"] > 30
    assert st["last_error"] is None
    verify_everywhere(gw, pb)
    acme_dir = gw.data_dir / "acme"
    assert mode(acme_dir / "account.json") == 0o600
    assert mode(acme_dir / "certificate.pem") == 0o600
    assert "Attempting to validate w/ HTTP" in pb.log()
    # the challenge listener answers nothing but challenge tokens
    with socket.create_connection(("127.0.0.1", int(gw.config["acme"]["http_listen"].split(":")[1])),
                                  timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 404")


def test_tls_alpn01_issuance_and_alpn_clients_unaffected(acme_gw):
    gw, pb = acme_gw(challenge="tls-alpn-01", pebble_http="dead")
    wait_issued(gw)
    der = verify_everywhere(gw, pb)
    assert "answered an ACME tls-alpn-01 validation handshake" in gw.log_text()
    assert "Attempting to validate w/ HTTP" not in pb.log()
    # clients that offer ALPN protocols of their own still get the normal certificate
    assert pop3s_cert(gw, pb.client_context(), alpn=["pop3"]) == der
    assert smtps_cert(gw.smtps_port, pb.client_context(), alpn=["smtp", "h2"]) == der
    # a stray acme-tls/1 handshake without a pending challenge is refused, not answered with
    # the normal certificate
    with pytest.raises((ssl.SSLError, ConnectionError)):
        smtps_cert(gw.smtps_port, unverified_ctx(), alpn=["acme-tls/1"])


def test_challenge_fallback_to_http01(acme_gw):
    gw, pb = acme_gw(challenge="tls-alpn-01", pebble_tls="dead")
    wait_issued(gw)
    verify_everywhere(gw, pb)
    log = gw.log_text()
    assert "ACME challenge failed" in log and "tls-alpn-01" in log, log[-3000:]


def test_bad_nonce_retry(acme_gw):
    """Pebble rejects half of all good nonces: the first issuance and two forced renewals
    (about 30 signed requests) still succeed."""
    gw, pb = acme_gw(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    assert "Configured to reject 50% of good nonces" in pb.log()
    wait_issued(gw, timeout=90)
    served = {verify_everywhere(gw, pb)}
    for _ in range(2):
        st = gw.cli("cert", "renew")
        assert st["last_error"] is None and not st["self_signed"]
        served.add(verify_everywhere(gw, pb))
    assert len(served) == 3


def test_forced_renewal_swaps_live_and_survives_restart(acme_gw):
    gw, pb = acme_gw()
    wait_issued(gw)
    first = verify_everywhere(gw, pb)
    pid = gw.pid
    # a connection opened before the renewal keeps working
    before = RawSMTP(gw.smtp_port)
    before.ehlo()
    st = gw.cli("cert", "renew")
    assert st["last_error"] is None and not st["self_signed"]
    second = verify_everywhere(gw, pb)
    assert second != first
    assert gw.pid == pid  # no restart
    assert before.cmd("NOOP")[0] == 250
    before.close()
    # without a server: status from the stored files, and `cert renew` issues directly
    # (answering the challenge itself); the next start loads the stored certificate instead
    # of ordering a new one
    gw.stop()
    offline = cert_status(gw)
    assert offline["self_signed"] is False and offline["names"] == [HOSTNAME]
    renewed = gw.cli("cert", "renew")
    assert renewed["last_error"] is None and renewed["not_after"] >= offline["not_after"]
    orders = gw.log_text().count("ACME order placed")
    gw.start()
    third = verify_everywhere(gw, pb)
    assert third not in (first, second)
    time.sleep(1)
    assert gw.log_text().count("ACME order placed") == orders


def test_unreachable_ca_keeps_serving_and_reports(acme_gw):
    dead = free_port()
    gw, _ = acme_gw(directory=f"https://127.0.0.1:{dead}/dir")
    st = wait_until(lambda: (s := cert_status(gw))["last_error"] and s, timeout=30,
                    what="last_error in cert status")
    assert st["self_signed"] is True and st["source"] == "acme"
    assert "connect" in st["last_error"].lower() or "refused" in st["last_error"].lower(), st
    # the listeners serve the self-signed certificate meanwhile
    der = smtps_cert(gw.smtps_port, unverified_ctx())
    assert der
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        c.starttls()
        assert c.cmd("NOOP")[0] == 250
    # a forced renewal fails with exit code 1 and the error
    rc, out, err = gw.cli_raw("cert", "renew")
    assert rc == 1, (rc, out, err)
    assert json.loads(out)["renew_error"]
    assert gw.running
