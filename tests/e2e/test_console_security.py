"""The console against hostile or careless clients (docs/CONSOLE.md): login answers and delays,
sessions and cookies, CSRF, escaping, path traversal, body and header limits, plain HTTP, and
secrets kept out of the log."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import socket
import ssl
import threading
import time
import tomllib
import urllib.parse

import pytest

from consoleharness import (  # noqa: F401  (console_gw is a fixture)
    API, Html, Resp, WebSession, assert_error, assert_redirect_to_login, console_gw,
    http_request, non_loopback_ipv4, parse_set_cookie, strip_csrf,
)
from jgharness import (
    HOSTNAME, RawPOP3, auth_plain_b64, make_message, pop3_fetch_all, send_smtp, unverified_ctx,
)


def login_attempt(con, name: str, password: str) -> tuple[float, Resp, WebSession]:
    s = con.session()
    r = s.get("/login")
    assert r.status == 200, r
    t0 = time.monotonic()
    r = s.post_form("/login", {"name": name, "password": password})
    return time.monotonic() - t0, r, s


def normalised(r: Resp, names) -> tuple[int, str, str]:
    """Status, redirect target and page with the csrf values and the submitted names (a form
    may show one again) blanked."""
    text = strip_csrf(r.text)
    for n in names:
        text = text.replace(n, "NAME")
    return r.status, r.location_path or "", text


# --------------------------------------------------------------------------- login


def test_wrong_password_and_unknown_admin_get_the_same_answer(console_gw):
    con = console_gw(admin="operator-x")
    answers = {}
    for label, name, pw in (("unknown admin", "mallory-q", "whatever-1"),
                            ("wrong password", con.admin, "whatever-2")):
        _, r, s = login_attempt(con, name, pw)
        assert r.status in (200, 302, 303, 401, 403), r
        assert "jg_session" not in s.cookies, f"{label}: a failed login set a session cookie"
        assert r.location_path != "/", f"{label}: a failed login redirects to the dashboard"
        answers[label] = normalised(r, ("mallory-q", con.admin))
    assert answers["unknown admin"] == answers["wrong password"], \
        f"the answers tell an unknown admin from a wrong password:\n{answers}"
    # and the right password still works afterwards
    con.login()


def test_login_failure_delay_grows_per_address(console_gw):
    con = console_gw()  # [auth] failure_delay_ms = 200
    times = []
    for i in range(4):
        name = con.admin if i % 2 else f"nobody{i}"
        dt, r, _ = login_attempt(con, name, f"wrong-{i}")
        assert r.location_path != "/", r
        times.append(dt)
    print([f"{t * 1000:.0f} ms" for t in times])
    # about 0.2, 0.4, 0.8, 1.6 s plus the same per-attempt cost (argon2id)
    assert times[0] >= 0.15, times
    assert times[3] >= 1.0, times
    assert times[3] - times[0] >= 0.9, times
    s = con.login()  # possibly after the delay
    assert s.get("/").status == 200


def test_login_timing_does_not_tell_which_admins_exist(console_gw):
    con = console_gw({"auth": {"failure_delay_ms": 0, "max_failure_delay_ms": 0}})
    samples = {"unknown": [], "wrong password": []}
    for i in range(6):
        samples["unknown"].append(login_attempt(con, f"ghost{i}", "x")[0])
        samples["wrong password"].append(login_attempt(con, con.admin, "x")[0])
    med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    print({k: f"{v * 1000:.0f} ms" for k, v in med.items()})
    assert 0.6 < med["unknown"] / med["wrong password"] < 1.6, med


def test_admin_cli_list_reset_delete(console_gw):
    con = console_gw()
    gw = con.gw
    stored = (gw.data_dir / "console" / "admins.json").read_text()
    assert con.password not in stored, "admins.json holds the password in clear"
    assert "$argon2id$" in stored, "admins.json holds no argon2id hash"
    admins = gw.cli("admin", "list")["admins"]
    assert [a["name"] for a in admins] == [con.admin], admins
    assert set(admins[0]) >= {"name", "created"} and "password" not in admins[0], admins
    second = gw.cli("admin", "add", "second")
    assert second["password"] != con.password
    con.login("second", second["password"])

    reset = gw.cli("admin", "reset-password", "second")
    assert reset["name"] == "second" and reset["password"] != second["password"], reset
    _, r, s = login_attempt(con, "second", second["password"])
    assert "jg_session" not in s.cookies and r.location_path != "/", "the old password still works"
    con.login("second", reset["password"])

    rc, out, err = gw.cli_raw("admin", "delete", "second", json_flag=False)
    assert rc == 0, (out, err)
    _, r, s = login_attempt(con, "second", reset["password"])
    assert "jg_session" not in s.cookies, "a deleted admin can still log in"
    assert [a["name"] for a in gw.cli("admin", "list")["admins"]] == [con.admin]


# --------------------------------------------------------------------------- sessions, cookies


def test_cookie_flags_over_https_and_plain_loopback(console_gw):
    con = console_gw()
    s = con.login()
    sc = [parse_set_cookie(h) for h in s.set_cookies]
    sess = [c for c in sc if c[0] == "jg_session"]
    assert sess, s.set_cookies
    _, value, attrs = sess[-1]
    assert len(value) >= 16, f"session id too short: {value!r}"
    assert attrs.get("secure") is True, f"jg_session over HTTPS lacks Secure: {s.set_cookies}"
    assert attrs.get("httponly") is True, f"jg_session lacks HttpOnly: {s.set_cookies}"
    assert str(attrs.get("samesite", "")).lower() == "strict", s.set_cookies
    assert attrs.get("path") == "/", s.set_cookies

    plain = con.login(tls=False)  # plain HTTP from loopback is served
    sc = [parse_set_cookie(h) for h in plain.set_cookies if h.startswith("jg_session=")]
    assert sc, plain.set_cookies
    _, _, attrs = sc[-1]
    assert "secure" not in attrs, f"Secure set over plain HTTP on loopback: {plain.set_cookies}"
    assert attrs.get("httponly") is True and str(attrs.get("samesite", "")).lower() == "strict"
    assert plain.get("/").status == 200


def test_forged_and_tampered_session_cookies(console_gw):
    con = console_gw()
    good = con.login()
    real = good.cookies["jg_session"]
    tampered = real[:-1] + ("A" if real[-1] != "A" else "B")
    for value in ("forged", tampered, "", real + real, "../../etc/passwd"):
        s = WebSession(con)
        s.cookies["jg_session"] = value
        for page in ("/", "/mailboxes", "/settings", "/activity"):
            assert_redirect_to_login(s.get(page))
        assert_error(s.api("GET", "status"), "unauthorized")
        assert_error(s.request("POST", f"{API}/mailboxes", body=b'{"name":"x","description":""}',
                               headers={"Content-Type": "application/json",
                                        "X-CSRF-Token": good.csrf}), "unauthorized")
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == []
    assert good.get("/").status == 200, "the real session stopped working"


@pytest.mark.slow
def test_idle_session_expires(console_gw):
    con = console_gw({"console": {"session_idle_minutes": 1}})
    s = con.login()
    assert s.get("/").status == 200
    assert s.api("GET", "status").status == 200
    time.sleep(66)
    assert_redirect_to_login(s.get("/"))
    assert_error(s.api("GET", "status"), "unauthorized")
    con.login()  # a new login works


def test_logout_ends_the_session(console_gw):
    con = console_gw()
    s = con.login()
    cookie = s.cookies["jg_session"]
    # logout without the csrf field is refused and the session stays
    r = s.post_form("/logout", {}, csrf=False)
    assert r.status == 403, r
    assert s.get("/").status == 200
    r = s.submit("/", "form#logout")
    assert_redirect_to_login(r)
    old = WebSession(con)
    old.cookies["jg_session"] = cookie
    assert_redirect_to_login(old.get("/"))
    assert_error(old.api("GET", "status"), "unauthorized")


def test_post_without_csrf_is_refused(console_gw):
    con = console_gw()
    s = con.login()
    other = con.login()
    assert s.csrf and other.csrf
    _, doc = s.page("/mailboxes")
    form = doc.one("form#create-mailbox")
    action = urllib.parse.urljoin("/mailboxes", form.get("action") or "/mailboxes")
    # no csrf field, a wrong one, and another session's
    for csrf in (None, "forged", other.csrf if other.csrf != s.csrf else None):
        fields = {"name": "csrf-victim", "description": ""}
        if csrf is not None:
            fields["csrf"] = csrf
        r = s.post_form(action, fields, csrf=False)
        assert r.status == 403, f"POST {action} with csrf={csrf!r}: {r!r}"
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == [], "a forged POST created a mailbox"
    r = s.submit("/mailboxes", "form#create-mailbox", {"name": "csrf-ok", "description": ""})
    assert r.status in (200, 302, 303), r
    assert [m["name"] for m in con.api_ok("GET", "mailboxes")["mailboxes"]] == ["csrf-ok"]


# --------------------------------------------------------------------------- escaping


XSS_NAME = "<script>alert(1)</script>"
XSS_DESC = '"><img src=x onerror=alert(2)>'


def test_hostile_names_are_escaped(console_gw):
    con = console_gw()
    m = con.create_mailbox(XSS_NAME, XSS_DESC)
    send_smtp(con.gw, m["address"], make_message(subject="<script>alert(3)</script>"))
    u = con.api("POST", "users", {"email": "xss@contoso.example", "aliases": [],
                                  "name": "<script>alert(4)</script>", "auditor": False})
    assert u.status == 201, u
    s = con.login()
    pages = ["/", "/mailboxes", f"/mailboxes/{m['id']}", "/activity", "/users",
             "/users/xss@contoso.example"]
    for page in pages:
        r, doc = s.page(page)
        raw = r.text
        for bad in ("<script>alert(", "<img src=x onerror", "onerror=alert(2)>"):
            assert bad not in raw, f"{page} shows {bad!r} unescaped"
        if page in ("/", "/mailboxes", f"/mailboxes/{m['id']}"):
            assert XSS_NAME in doc.text() or any(
                XSS_NAME == (n.get("value") or "") for n in doc.select("input")), \
                f"{page} does not show the mailbox name (escaped) at all"
    _, dash = s.page("/")
    row = dash.one(f"tr[data-mailbox={m['id']}]")
    assert XSS_NAME in row.text(), row.text()


# --------------------------------------------------------------------------- paths


TRAVERSALS = [
    "/mailboxes/..%2f..%2fetc%2fpasswd",
    "/mailboxes/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/mailboxes/../../etc/passwd",
    "/static/../../etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/....//....//etc/passwd",
    "/static/..\\..\\etc\\passwd",
    "/users/..%2f..%2fetc%2fpasswd",
    "/activity/../../../../etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd",
]
API_TRAVERSALS = [
    "/api/v1/mailboxes/..%2F..",
    "/api/v1/mailboxes/..%2F..%2Fstatus",
    "/api/v1/mailboxes/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/v1/users/..%2F..%2Fetc%2Fpasswd",
    "/api/v1/../../etc/passwd",
]


def test_path_traversal_finds_nothing(console_gw):
    con = console_gw()
    con.create_mailbox("victim")
    s = con.login()
    for path in TRAVERSALS:
        r = s.get(path)
        assert r.status in (400, 404), f"{path}: {r!r}"
        assert b"root:" not in r.body, f"{path} served /etc/passwd"
    for path in API_TRAVERSALS:
        r = con.request("GET", path, token=con.token)
        assert r.status in (400, 404), f"{path}: {r!r}"
        assert b"root:" not in r.body and b'"hostname"' not in r.body, f"{path}: {r.body[:300]!r}"
        r = con.request("DELETE", path, token=con.token)
        assert r.status in (400, 404, 405), f"DELETE {path}: {r!r}"
    assert [m["name"] for m in con.api_ok("GET", "mailboxes")["mailboxes"]] == ["victim"]


# --------------------------------------------------------------------------- limits


def _tls_socket(con, timeout=30):
    raw = socket.create_connection((con.host, con.port), timeout=timeout)
    return unverified_ctx().wrap_socket(raw, server_hostname=HOSTNAME)


def _read_available(s: ssl.SSLSocket) -> bytes | None:
    """What the server sent so far without blocking (b"" at EOF, None when nothing)."""
    r, _, _ = select.select([s], [], [], 0)
    if not r and not s.pending():
        return None
    # Readable may be a TLS record with no data (a TLS 1.3 session ticket): do not block.
    before = s.gettimeout()
    s.settimeout(0.2)
    try:
        return s.recv(65536)
    except (ssl.SSLWantReadError, TimeoutError):
        return None
    finally:
        s.settimeout(before)


def post_huge(con, path: str, size: int, headers: dict, chunked=False) -> bytes:
    """POST `size` bytes; stops sending when the server answers or stops reading. Returns
    everything the server sent until it closed (or 30 s passed)."""
    s = _tls_socket(con)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{con.port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    got = b""
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        block = b"a" * 65536
        sent = 0
        s.settimeout(10)
        while sent < size:
            more = _read_available(s)
            if more is not None:
                got += more
                break
            n = min(len(block), size - sent)
            data = block[:n]
            try:
                s.sendall(b"%x\r\n%s\r\n" % (n, data) if chunked else data)
            except (OSError, ssl.SSLError):
                break
            sent += n
        else:
            with contextlib.suppress(OSError, ssl.SSLError):
                if chunked:
                    s.sendall(b"0\r\n\r\n")
        s.settimeout(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (OSError, ssl.SSLError):
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got and not chunked and b"413" in got.split(b"\r\n", 1)[0]:
                # enough to judge; keep reading briefly for the body
                s.settimeout(2)
    finally:
        with contextlib.suppress(Exception):
            s.close()
    return got


def test_ten_megabyte_body_is_413(console_gw):
    con = console_gw()
    ten_mb = 10 * 1024 * 1024
    auth = {"Authorization": f"Bearer {con.token}", "Content-Type": "application/json"}
    for chunked in (False, True):
        got = post_huge(con, f"{API}/mailboxes", ten_mb, auth, chunked=chunked)
        status = got.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 413"), \
            f"10 MB API body (chunked={chunked}): {got[:300]!r}"
        body = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b""
        if body and not chunked:
            with contextlib.suppress(ValueError):
                assert json.loads(body)["error"]["code"] == "payload_too_large", body[:300]
    got = post_huge(con, "/login", ten_mb, {"Content-Type": "application/x-www-form-urlencoded"})
    assert got.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 413"), got[:300]
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == []
    assert con.get("/healthz").status == 200


@pytest.mark.slow
def test_slow_header_client_is_cut_off(console_gw):
    """Headers sent one byte a second: the 30 s header deadline closes the connection."""
    con = console_gw()
    s = _tls_socket(con, timeout=5)
    start = time.monotonic()
    closed_at = None
    trickle = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    answered = b""
    try:
        for i in range(len(trickle)):
            try:
                s.sendall(trickle[i:i + 1])
            except (OSError, ssl.SSLError):
                closed_at = time.monotonic()
                break
            end = time.monotonic() + 1
            while time.monotonic() < end:
                r, _, _ = select.select([s], [], [], max(0.0, end - time.monotonic()))
                if not r and not s.pending():
                    continue
                try:
                    chunk = s.recv(4096)
                except ssl.SSLWantReadError:
                    continue
                except (OSError, ssl.SSLError):
                    chunk = b""
                if not chunk:
                    closed_at = time.monotonic()
                    break
                answered += chunk
            if closed_at is not None:
                break
            if i == 10:
                # meanwhile other clients are served
                assert con.get("/healthz", timeout=10).status == 200
            if time.monotonic() - start > 45:
                break
    finally:
        with contextlib.suppress(Exception):
            s.close()
    assert closed_at is not None, "a client trickling its headers was not cut off within 45 s"
    took = closed_at - start
    print(f"closed after {took:.1f} s; answered {answered[:100]!r}")
    assert took <= 36, f"cut off only after {took:.1f} s (header deadline is 30 s)"
    assert not answered.startswith(b"HTTP/1.1 200"), answered[:200]


def test_plain_http_from_loopback_is_served(console_gw):
    con = console_gw()
    r = http_request("127.0.0.1", con.port, "GET", "/healthz", tls=False)
    assert r.status == 200 and r.text.strip() == "ok", r
    r = http_request("127.0.0.1", con.port, "GET", f"{API}/status", tls=False,
                     headers={"Authorization": f"Bearer {con.token}"})
    assert r.status == 200 and r.json()["hostname"] == HOSTNAME, r


def test_plain_http_from_another_address_gets_400(console_gw):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    con = console_gw(host=ip)
    with socket.create_connection((ip, con.port), timeout=15) as c:
        assert not c.getsockname()[0].startswith("127."), c.getsockname()
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        c.settimeout(15)
        while True:
            try:
                chunk = c.recv(4096)
            except socket.timeout:
                raise AssertionError(f"plain HTTP from {ip}: the connection was not closed "
                                     f"within 15 s; got {got[:300]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), got[:300]
    assert b"https" in body.lower() and body.strip().count(b"\n") == 0, \
        f"expected a one-line body saying to use https: {body!r}"
    # HTTPS from that address works
    r = http_request(ip, con.port, "GET", "/healthz")
    assert r.status == 200, r


# --------------------------------------------------------------------------- settings, secrets


def test_settings_page_shows_the_effective_config(console_gw):
    con = console_gw({"alerts": {"smtp_username": "relay-user"}})
    s = con.login()
    _, doc = s.page("/settings")
    text = doc.one("pre#settings").text()
    cfg = tomllib.loads(text)
    assert cfg.get("hostname") == HOSTNAME, cfg
    assert cfg["console"]["listen"] == f"127.0.0.1:{con.port}", cfg.get("console")
    assert doc.first("form#trace") is not None, "/settings has no form#trace"
    assert con.password not in text and con.token not in text


def test_no_secret_reaches_the_log(console_gw):
    con = console_gw(imap=True)
    gw = con.gw
    secrets = {"admin password": con.password, "token": con.token, "ro token": con.ro_token}
    # trace everything a client says
    for proto in ("smtp", "pop3", "imap"):
        con.api_ok("POST", "trace", {"protocol": proto, "on": True, "minutes": 5})
    m = con.create_mailbox("secret-test")
    secrets["mailbox password"] = m["password"]
    send_smtp(gw, m["address"], make_message(subject="secret test"))
    pop3_fetch_all(gw, m)
    with RawPOP3(gw.pop3s_port) as c:
        b64 = auth_plain_b64(m["id"], m["password"])
        secrets["AUTH PLAIN"] = b64
        assert c.cmd(f"AUTH PLAIN {b64}").startswith(b"+OK")
        c.cmd("QUIT")
    r = con.api_ok("POST", f"mailboxes/{m['id']}/reset-password")
    secrets["reset mailbox password"] = r["password"]
    u = con.api_ok("POST", "users", {"email": "sec@contoso.example", "aliases": [],
                                     "name": "Sec", "auditor": False}, status=201)
    secrets["user password"] = u["password"]
    ur = con.api_ok("POST", "users/sec@contoso.example/reset-password")
    secrets["user reset password"] = ur["password"]
    wrong = "Wrong-" + base64.b32encode(os.urandom(10)).decode()
    secrets["a mistyped admin password"] = wrong
    login_attempt(con, con.admin, wrong)
    s = con.login()
    secrets["session cookie"] = s.cookies["jg_session"]
    secrets["csrf token"] = s.csrf
    r = s.submit("/mailboxes", "form#create-mailbox", {"name": "via form", "description": ""})
    if r.status in (302, 303):
        r = s.follow(r)
    shown = Html(r.text).first("#new-password")
    assert shown is not None, f"no #new-password after creating a mailbox: {r!r}"
    for word in re.findall(r"\S{16,}", shown.text() + " " + (shown.get("value") or "")):
        secrets[f"form-made password {word[:4]}..."] = word
    later = con.make_token("later")
    secrets["later token"] = later
    con.api_ok("GET", "status", token=later)
    time.sleep(0.5)
    log = gw.log_text()
    assert "journalgate::trace" in log, "the trace was not on (nothing to check)"
    leaked = [k for k, v in secrets.items() if v and v in log]
    assert not leaked, f"secrets in the server log: {leaked}"
    assert base64.b64encode(con.password.encode()).decode() not in log


def test_many_parallel_clients_do_not_break_the_console(console_gw):
    con = console_gw()
    errors = []

    def worker():
        try:
            for _ in range(10):
                r = con.api("GET", "status")
                assert r.status == 200, r
        except Exception as e:  # collected below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
