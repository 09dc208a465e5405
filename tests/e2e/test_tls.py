"""TLS: self-signed certificate for the hostname, persisted; PEM files served as configured."""

from __future__ import annotations

import poplib
import smtplib
import socket
import ssl
import subprocess
import warnings

from jgharness import HOSTNAME, RawSMTP, make_message, pop3_fetch_all, send_smtp, strip_received, unverified_ctx


def openssl(*args, input=None) -> bytes:
    p = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def cert_text(der: bytes) -> str:
    return openssl("x509", "-inform", "DER", "-noout", "-text", input=der).decode()


def smtp_starttls_cert(port) -> bytes:
    with RawSMTP(port) as c:
        c.ehlo()
        c.starttls()
        return c.sock.getpeercert(binary_form=True)


def smtps_cert(port) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            return t.getpeercert(binary_form=True)


def pop3_certs(gw) -> tuple[bytes, bytes]:
    p = poplib.POP3_SSL("127.0.0.1", gw.pop3s_port, timeout=30, context=unverified_ctx())
    a = p.sock.getpeercert(binary_form=True)
    p.close()
    p = poplib.POP3("127.0.0.1", gw.pop3_port, timeout=30)
    p.stls(context=unverified_ctx())
    b = p.sock.getpeercert(binary_form=True)
    p.close()
    return a, b


def test_self_signed_cert_for_hostname_persisted(gw):
    der = smtp_starttls_cert(gw.smtp_port)
    assert der
    text = cert_text(der)
    assert f"DNS:{HOSTNAME}" in text, text
    # every listener serves the same certificate
    assert smtps_cert(gw.smtps_port) == der
    assert pop3_certs(gw) == (der, der)
    # a client trusting exactly this certificate verifies it for the hostname
    pem = ssl.DER_cert_to_PEM_cert(der)
    ctx = ssl.create_default_context(cadata=pem)
    with socket.create_connection(("127.0.0.1", gw.smtps_port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
    assert any((gw.data_dir / "tls").iterdir()), "certificate not stored under data_dir/tls"
    gw.restart()
    assert smtp_starttls_cert(gw.smtp_port) == der, "self-signed certificate changed on restart"
    assert pop3_certs(gw) == (der, der)


def test_tls_versions(gw):
    for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = unverified_ctx()
        ctx.minimum_version = ver
        ctx.maximum_version = ver
        with socket.create_connection(("127.0.0.1", gw.pop3s_port), timeout=30) as s:
            with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
                assert t.version() == ver.name.replace("v1_", "v1.")
    # TLS 1.0/1.1 must be refused by the server (an alert, not a local client refusal)
    ctx = unverified_ctx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", gw.pop3s_port), timeout=30) as s:
        try:
            with ctx.wrap_socket(s, server_hostname=HOSTNAME) as t:
                raise AssertionError(f"server accepted {t.version()}")
        except ssl.SSLError as e:
            assert "NO_PROTOCOLS_AVAILABLE" not in str(e) and "NO_CIPHERS" not in str(e), e
        except ConnectionError:
            pass


def test_tls_from_files(make_gw, tmp_path):
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "3", "-subj", "/CN=files.test",
            "-addext", "subjectAltName=DNS:files.test,DNS:gw.test")
    want = openssl("x509", "-in", str(cert), "-outform", "DER")
    gw = make_gw(tls={"source": "files", "cert_file": str(cert), "key_file": str(key)})

    assert smtp_starttls_cert(gw.smtp_port) == want
    assert smtps_cert(gw.smtps_port) == want
    assert pop3_certs(gw) == (want, want)

    # a verifying client that trusts only this certificate
    ctx = ssl.create_default_context(cafile=str(cert))
    m = gw.create_mailbox()
    msg = make_message(subject="verified tls")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, local_hostname="client.test", timeout=30) as s:
        s._host = "files.test"  # name checked against the certificate
        s.starttls(context=ctx)
        s.sendmail("journal@contoso.example", [m["address"]], msg)
    p = poplib.POP3("127.0.0.1", gw.pop3_port, timeout=30)
    p.host = "files.test"
    p.stls(context=ctx)
    p.user(m["id"])
    p.pass_(m["password"])
    assert p.stat()[0] == 1
    p.quit()
    got = pop3_fetch_all(gw, m, mode="ssl")
    assert [strip_received(x) for _, x in got] == [msg]
    send_smtp(gw, m["address"], msg, tls="implicit")
    assert len(pop3_fetch_all(gw, m)) == 2
