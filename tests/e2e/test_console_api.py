"""The console's JSON API (/api/v1, docs/CONSOLE.md) end to end: curl and Python clients with
Bearer tokens against a live gateway; results cross-checked with the CLI and the mail protocols."""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import json
import poplib
import re
import smtplib
import socket
import subprocess
import time
import urllib.parse

import pytest

from archiveharness import imap_user
from consoleharness import (  # noqa: F401  (console_gw is a fixture)
    API, CONTRACT_ENDPOINTS, EVENT_KINDS, MAILBOX_FIELDS, USER_FIELDS, assert_error, console_gw,
    now_utc, rfc3339,
)
from jgharness import (
    HOSTNAME, MBX_ID_RE, RawSMTP, make_message, pop3_error_text, pop3_fetch_all, pop3_login,
    send_smtp, unverified_ctx, wait_until,
)


# --------------------------------------------------------------------------- helpers


def assert_mailbox(m: dict, **expect):
    assert isinstance(m, dict), m
    missing = MAILBOX_FIELDS - set(m)
    assert not missing, f"<mailbox> lacks {sorted(missing)}: {m}"
    with_password = expect.pop("_with_password", False)
    assert "password" not in m or with_password, \
        f"a <mailbox> answer other than create carries the password: {m}"
    assert MBX_ID_RE.match(m["id"]), m
    assert m["address"] == f"{m['id']}@{HOSTNAME}", m
    assert m["status"] in ("active", "suspended"), m
    assert isinstance(m["messages"], int) and isinstance(m["bytes"], int), m
    rfc3339(m["created"])
    if m["last_received"] is not None:
        rfc3339(m["last_received"])
    if m["last_collected"] is not None:
        lc = m["last_collected"]
        assert set(lc) >= {"time", "protocol", "client"}, f"last_collected: {lc}"
        rfc3339(lc["time"])
    for k, v in expect.items():
        assert m[k] == v, f"<mailbox>.{k} is {m[k]!r}, expected {v!r}: {m}"


def assert_user(u: dict, **expect):
    missing = USER_FIELDS - set(u)
    assert not missing, f"<user> lacks {sorted(missing)}: {u}"
    assert str(u["id"]).startswith("usr-"), u
    assert isinstance(u["aliases"], list) and isinstance(u["auditor"], bool), u
    rfc3339(u["created"])
    for k, v in expect.items():
        assert u[k] == v, f"<user>.{k} is {u[k]!r}, expected {v!r}: {u}"


def rcpt_code(gw, address: str) -> int:
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 250, text
        return c.cmd(f"RCPT TO:<{address}>")[0]


def pop3_login_fails(gw, user, password) -> bool:
    try:
        p = pop3_login(gw, user, password)
    except poplib.error_proto as e:
        assert pop3_error_text(e).startswith(b"-ERR"), e
        return True
    with contextlib.suppress(Exception):
        p.quit()
    return False


def served_der(port: int, host="127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=30) as s:
        with unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            return t.getpeercert(binary_form=True)


def openssl(*args, cwd=None) -> bytes:
    p = subprocess.run(["openssl", *map(str, args)], capture_output=True, timeout=60, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def make_cert(d, name: str, cn="files.test"):
    key, cert = d / f"{name}-key.pem", d / f"{name}-cert.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "20", "-subj", f"/CN={cn}",
            "-addext", f"subjectAltName=DNS:{cn},DNS:{HOSTNAME}")
    return cert, key, openssl("x509", "-in", cert, "-outform", "DER")


def normalise_template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


# --------------------------------------------------------------------------- status


def test_status_with_curl_and_python(console_gw):
    con = console_gw({"spool": {"min_free_bytes": 4096}})
    gw = con.gw
    m = gw.create_mailbox(name="status-box")

    code, body = con.curl_api("GET", "status")
    assert code == 200, (code, body[:500])
    via_curl = json.loads(body)
    st = con.api_ok("GET", "status")
    for k in ("version", "hostname", "uptime_secs", "mailboxes", "archive", "certificate",
              "disk", "listeners", "alerts", "recovery_key"):
        assert k in st, f"status lacks {k!r}: {sorted(st)}"
        assert k in via_curl, f"status (curl) lacks {k!r}"
    assert st["hostname"] == HOSTNAME, st["hostname"]
    assert isinstance(st["version"], str) and st["version"], st["version"]
    assert isinstance(st["uptime_secs"], int) and 0 <= st["uptime_secs"] < 600, st["uptime_secs"]
    assert st["archive"] is None or isinstance(st["archive"], dict), st["archive"]
    assert isinstance(st["recovery_key"], bool) and st["recovery_key"] is False, st["recovery_key"]
    assert [x["id"] for x in st["mailboxes"]] == [m["id"]], st["mailboxes"]
    assert_mailbox(st["mailboxes"][0], name="status-box", status="active", messages=0)
    assert set(st["certificate"]) >= {"source", "names", "issuer", "not_after", "days_left",
                                      "last_error"}, st["certificate"]
    assert st["certificate"]["source"] == "self-signed", st["certificate"]
    disk = st["disk"]
    assert isinstance(disk.get("free_bytes"), int) and disk["free_bytes"] > 0, disk
    assert disk.get("reserve_bytes") == 4096, f"disk.reserve_bytes should be [spool] " \
                                              f"min_free_bytes (4096): {disk}"
    assert st["alerts"] == [], st["alerts"]
    addrs = {}
    for ln in st["listeners"]:
        assert set(ln) >= {"protocol", "addr"}, ln
        addrs[ln["addr"]] = ln["protocol"].lower()
    for port, proto in ((gw.smtp_port, "smtp"), (gw.smtps_port, "smtp"), (gw.pop3_port, "pop3"),
                        (gw.pop3s_port, "pop3")):
        a = f"127.0.0.1:{port}"
        assert a in addrs, f"listener {a} missing from status.listeners {st['listeners']}"
        assert addrs[a].startswith(proto), f"listener {a} has protocol {addrs[a]!r}"
    time.sleep(1.1)
    assert con.api_ok("GET", "status")["uptime_secs"] >= st["uptime_secs"] + 1


def test_console_serves_the_mail_certificate_over_http1_and_http2(console_gw):
    con = console_gw()
    assert served_der(con.port) == served_der(con.gw.smtps_port), \
        "the console does not serve the mail listeners' certificate"
    p = con.curl("--http2", "-o", "/dev/null", "-w", "%{http_version}", con.base_url + "/healthz")
    assert p.returncode == 0 and p.stdout.decode() == "2", (p.stdout, p.stderr)
    p = con.curl("--http1.1", "-o", "/dev/null", "-w", "%{http_version}", con.base_url + "/healthz")
    assert p.returncode == 0 and p.stdout.decode() == "1.1", (p.stdout, p.stderr)
    p = con.curl("--http2", "-H", f"Authorization: Bearer {con.token}", con.base_url + API + "/status")
    assert p.returncode == 0 and json.loads(p.stdout)["hostname"] == HOSTNAME, (p.stdout, p.stderr)


# --------------------------------------------------------------------------- mailboxes


def test_mailbox_lifecycle(console_gw):
    con = console_gw()
    gw = con.gw
    # create (curl)
    code, body = con.curl_api("POST", "mailboxes", {"name": "api-box",
                                                    "description": "made by the API"})
    assert code == 201, (code, body[:500])
    m = json.loads(body)
    assert_mailbox(m, _with_password=True, name="api-box", description="made by the API",
                   status="active", messages=0, bytes=0, last_received=None, last_collected=None)
    assert isinstance(m["password"], str) and len(m["password"]) >= 22, m
    mid = m["id"]
    assert abs((rfc3339(m["created"]) - now_utc()).total_seconds()) < 120, m["created"]
    # the password works for POP3, and the CLI sees the same mailbox
    assert pop3_fetch_all(gw, m) == []
    shown = gw.show(mid)
    assert shown["name"] == "api-box" and shown["description"] == "made by the API", shown

    # get, list
    got = con.api_ok("GET", f"mailboxes/{mid}")
    assert_mailbox(got, id=mid, name="api-box", status="active")
    listing = con.api_ok("GET", "mailboxes")["mailboxes"]
    assert [x["id"] for x in listing] == [mid], listing

    # a delivery shows in messages/bytes/last_received
    send_smtp(gw, m["address"], make_message(subject="api lifecycle"))
    got = con.api_ok("GET", f"mailboxes/{mid}")
    assert got["messages"] == 1 and got["bytes"] > 0 and got["last_received"], got
    assert got["bytes"] == shown_bytes(gw, mid), (got, gw.show(mid))

    # patch name/description
    p = con.api_ok("PATCH", f"mailboxes/{mid}", {"name": "renamed", "description": "new words"})
    assert_mailbox(p, id=mid, name="renamed", description="new words", status="active")
    assert gw.show(mid)["name"] == "renamed"
    p = con.api_ok("PATCH", f"mailboxes/{mid}", {"description": "only this"})
    assert p["name"] == "renamed" and p["description"] == "only this", p

    # delete while active: 409 conflict, nothing deleted
    assert_error(con.api("DELETE", f"mailboxes/{mid}"), "conflict")
    assert con.api_ok("GET", f"mailboxes/{mid}")["messages"] == 1

    # suspend: SMTP answers 450 4.2.1; resume: 250 again
    p = con.api_ok("PATCH", f"mailboxes/{mid}", {"status": "suspended"})
    assert p["status"] == "suspended", p
    assert gw.show(mid)["status"] == "suspended"
    assert rcpt_code(gw, m["address"]) == 450
    p = con.api_ok("PATCH", f"mailboxes/{mid}", {"status": "active"})
    assert p["status"] == "active", p
    assert rcpt_code(gw, m["address"]) == 250

    # reset-password: the new one works, the old one does not; mail that came before the
    # reset stays sealed to the old key and is set aside (README), new mail is served.
    r = con.api_ok("POST", f"mailboxes/{mid}/reset-password")
    assert set(r) >= {"id", "password"} and r["id"] == mid, r
    assert r["password"] != m["password"] and len(r["password"]) >= 22, r
    assert pop3_login_fails(gw, mid, m["password"]), "the old password still logs in"
    assert con.api_ok("GET", f"mailboxes/{mid}")["messages"] == 0
    send_smtp(gw, [m["address"]], b"Subject: after the reset\r\n\r\nnew key\r\n")
    fetched = pop3_fetch_all(gw, {"id": mid, "password": r["password"]})
    assert len(fetched) == 1 and b"after the reset" in fetched[0][1], \
        "the new password does not open the mail that came after the reset"

    # suspended, then delete: 204, then 404 everywhere
    con.api_ok("PATCH", f"mailboxes/{mid}", {"status": "suspended"})
    d = con.api("DELETE", f"mailboxes/{mid}")
    assert d.status == 204, d
    assert d.body == b"", d
    assert_error(con.api("GET", f"mailboxes/{mid}"), "not_found")
    assert_error(con.api("PATCH", f"mailboxes/{mid}", {"name": "x"}), "not_found")
    assert_error(con.api("POST", f"mailboxes/{mid}/reset-password"), "not_found")
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == []
    assert rcpt_code(gw, m["address"]) == 550
    rc, out, err = gw.cli_raw("mailbox", "show", mid)
    assert rc != 0, f"the CLI still shows a deleted mailbox: {out}"


def shown_bytes(gw, mid) -> int:
    return gw.show(mid)["bytes"]


def test_mailbox_bad_requests(console_gw):
    con = console_gw()
    m = con.create_mailbox("bad-requests")
    bad = [
        ("POST", "mailboxes", b"{not json", "bad_request"),
        ("POST", "mailboxes", {"name": 17}, "bad_request"),
        ("PATCH", f"mailboxes/{m['id']}", {"status": "frozen"}, "bad_request"),
        ("PATCH", f"mailboxes/{m['id']}", b"[1,2", "bad_request"),
        ("POST", "trace", {"protocol": "ftp", "on": True}, "bad_request"),
        ("POST", "trace", {"protocol": "smtp"}, "bad_request"),
        ("GET", "mailboxes/mbx-00000000000000000000000000000000", None, "not_found"),
        ("GET", "mailboxes/not-an-id", None, ("not_found", "bad_request")),
        ("GET", "users/nobody@contoso.example", None, "not_found"),
        ("GET", "no-such-endpoint", None, "not_found"),
        ("DELETE", f"mailboxes/{m['id']}", None, "conflict"),
        ("POST", "certificate/renew", None, "conflict"),  # self-signed: ACME only
    ]
    for method, path, body, code in bad:
        hdrs = {"Content-Type": "application/json"} if isinstance(body, bytes) else None
        r = con.api(method, path, body=body, headers=hdrs)
        codes = code if isinstance(code, tuple) else (code,)
        got = r.json().get("error", {}).get("code") if r.body[:1] == b"{" else None
        assert_error(r, got if got in codes else codes[0])
    # nothing changed
    assert_mailbox(con.mailbox(m["id"]), name="bad-requests", status="active")


def test_body_over_max_body_bytes_is_413_json(console_gw):
    con = console_gw({"console": {"max_body_bytes": 4096}})
    big = {"name": "x" * 8000, "description": ""}
    assert_error(con.api("POST", "mailboxes", big), "payload_too_large")
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == []
    ok = con.api("POST", "mailboxes", {"name": "small", "description": "y" * 1000})
    assert ok.status == 201, ok


# --------------------------------------------------------------------------- users


def test_user_lifecycle(console_gw):
    con = console_gw(imap=True)
    gw = con.gw
    login = "alice@contoso.example"
    q = urllib.parse.quote(login, safe="@")
    u = con.api_ok("POST", "users", {"email": "Alice@Contoso.example",
                                     "aliases": ["a.smith@contoso.example"],
                                     "name": "Alice Smith", "auditor": False}, status=201)
    assert_user(u, login=login, aliases=["a.smith@contoso.example"], name="Alice Smith",
                auditor=False)
    assert isinstance(u.get("password"), str) and len(u["password"]) >= 16, u
    c = imap_user(gw, login, u["password"])
    c.logout()

    assert_user(con.api_ok("GET", f"users/{q}"), id=u["id"], login=login)
    assert [x["login"] for x in con.api_ok("GET", "users")["users"]] == [login]
    cli = gw.cli("user", "show", login)
    assert cli.get("login") == login, cli

    p = con.api_ok("PATCH", f"users/{q}", {"aliases": ["a.smith@contoso.example",
                                                       "alice.s@contoso.example"]})
    assert sorted(p["aliases"]) == ["a.smith@contoso.example", "alice.s@contoso.example"], p
    assert p["name"] == "Alice Smith", p
    p = con.api_ok("PATCH", f"users/{q}", {"name": "Alice S."})
    assert p["name"] == "Alice S." and len(p["aliases"]) == 2, p
    assert sorted(con.api_ok("GET", f"users/{q}")["aliases"]) == sorted(p["aliases"])
    cli = gw.cli("user", "show", login)
    assert sorted(cli.get("aliases", [])) == sorted(p["aliases"]), cli

    r = con.api_ok("POST", f"users/{q}/reset-password")
    assert r.get("login") == login and r["password"] != u["password"], r
    with pytest.raises((imaplib.IMAP4.error, AssertionError)):  # imap_user raises either
        imap_user(gw, login, u["password"])
    imap_user(gw, login, r["password"]).logout()

    auditor = con.api_ok("POST", "users", {"email": "audit@contoso.example", "aliases": [],
                                           "name": "Audit", "auditor": True}, status=201)
    assert_user(auditor, auditor=True, login="audit@contoso.example")

    d = con.api("DELETE", f"users/{q}")
    assert d.status == 204 and d.body == b"", d
    assert_error(con.api("GET", f"users/{q}"), "not_found")
    assert_error(con.api("DELETE", f"users/{q}"), "not_found")
    assert [x["login"] for x in con.api_ok("GET", "users")["users"]] == ["audit@contoso.example"]
    with pytest.raises((imaplib.IMAP4.error, AssertionError)):  # imap_user raises either
        imap_user(gw, login, r["password"])
    # a duplicate login is a conflict
    assert_error(con.api("POST", "users", {"email": "audit@contoso.example", "aliases": [],
                                           "name": "again", "auditor": False}), "conflict")


# --------------------------------------------------------------------------- certificate


def test_certificate_status_matches_cli(console_gw):
    con = console_gw()
    c = con.api_ok("GET", "certificate")
    assert set(c) >= {"source", "names", "issuer", "not_after", "days_left", "last_error"}, c
    cli = con.gw.cli("cert", "status")
    assert c["source"] == cli["source"] == "self-signed", (c, cli)
    assert c["names"] == cli["names"] and HOSTNAME in c["names"], (c, cli)
    assert c["days_left"] == cli["days_left"] and c["days_left"] > 0, (c, cli)
    assert c["last_error"] is None, c
    assert rfc3339(c["not_after"]) > now_utc(), c
    assert isinstance(c["issuer"], str) and c["issuer"], c
    # ACME renewals and uploads are for the other sources
    assert_error(con.api("POST", "certificate/renew"), "conflict")
    r = con.api("POST", "certificate", {"cert_pem": "x", "key_pem": "y"})
    assert r.status in (400, 409), f"upload on a self-signed gateway: {r!r}"


def test_certificate_upload_swaps_live(console_gw, tmp_path):
    cert, key, der0 = make_cert(tmp_path, "first")
    con = console_gw({"tls": {"source": "files", "cert_file": str(cert), "key_file": str(key)}})
    gw = con.gw
    assert served_der(gw.smtps_port) == der0 and served_der(con.port) == der0
    c = con.api_ok("GET", "certificate")
    assert c["source"] == "files", c

    cert2, key2, der2 = make_cert(tmp_path, "second", cn="second.test")
    _, other_key, _ = make_cert(tmp_path, "other")
    # a key that does not match the certificate, and garbage: 400, nothing changes
    assert_error(con.api("POST", "certificate", {"cert_pem": cert2.read_text(),
                                                 "key_pem": other_key.read_text()}), "bad_request")
    assert_error(con.api("POST", "certificate", {"cert_pem": "not a pem", "key_pem": "nope"}),
                 "bad_request")
    assert served_der(gw.smtps_port) == der0
    pid = gw.pid
    st = con.api_ok("POST", "certificate", {"cert_pem": cert2.read_text(),
                                            "key_pem": key2.read_text()})
    assert st["source"] == "files" and "second.test" in st["names"], st
    assert st["last_error"] is None, st
    wait_until(lambda: served_der(gw.smtps_port) == der2, timeout=10,
               what="the uploaded certificate on SMTPS")
    assert served_der(gw.pop3s_port) == der2
    assert served_der(con.port) == der2, "the console does not serve the uploaded certificate"
    assert gw.pid == pid
    # it survives a restart
    gw.restart()
    con.wait_healthy()
    assert served_der(gw.smtps_port) == der2


# --------------------------------------------------------------------------- events, alerts


def test_events_after_delivery_and_collection(console_gw):
    con = console_gw()
    gw = con.gw
    m = con.create_mailbox("events")
    t0 = now_utc()
    for i in range(2):
        send_smtp(gw, m["address"], make_message(subject=f"event {i}"))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_smtp(gw, f"mbx-{'0' * 32}@{HOSTNAME}", make_message(subject="unknown"))
    assert pop3_login_fails(gw, m["id"], "wrong password")
    pop3_fetch_all(gw, m, delete=True)

    def accepted():
        return [e for e in con.events(mailbox=m["id"], kind="accepted")]
    evs = wait_until(lambda: len(accepted()) >= 2 and accepted(), timeout=10,
                     what="two accepted events")
    assert len(evs) == 2, evs
    for e in evs:
        assert e["kind"] == "accepted" and e["mailbox"] == m["id"], e
        assert e.get("protocol") in (None, "smtp"), e
        assert "time" in e and "detail" in e, e
        assert rfc3339(e["time"]) >= t0 - datetime.timedelta(seconds=2), e
    assert rfc3339(evs[0]["time"]) >= rfc3339(evs[1]["time"]), f"not newest first: {evs}"

    every = con.events()
    kinds = [e["kind"] for e in every]
    assert set(kinds) <= EVENT_KINDS, kinds
    for k in ("accepted", "rejected", "login_failed", "login", "collected"):
        assert k in kinds, f"no {k!r} event in {every}"
    times = [rfc3339(e["time"]) for e in every]
    assert times == sorted(times, reverse=True), f"events not newest first: {every}"
    rejected = [e for e in every if e["kind"] == "rejected"]
    assert rejected[0]["detail"], rejected
    assert all(e["kind"] == "rejected" for e in con.events(kind="rejected"))
    assert len(con.events(limit=1)) == 1
    assert con.events(mailbox=f"mbx-{'1' * 32}") == []


def test_alerts_and_trace(console_gw):
    con = console_gw()
    gw = con.gw
    assert con.api_ok("GET", "alerts") == {"alerts": []}
    m = gw.create_mailbox(name="traced")
    send_smtp(gw, m["address"], make_message(subject="before trace"))

    t = con.api_ok("POST", "trace", {"protocol": "pop3", "on": True, "minutes": 5})
    assert t["protocol"] == "pop3", t
    until = rfc3339(t["until"])
    left = (until - now_utc()).total_seconds()
    assert 240 < left <= 301, f"trace until {t['until']} is not ~5 minutes away"
    mark = len(gw.log_text())
    pop3_fetch_all(gw, m)
    wait_until(lambda: "STAT" in gw.log_text()[mark:] or "UIDL" in gw.log_text()[mark:],
               timeout=10, what="traced POP3 commands in the log")
    traced = gw.log_text()[mark:]
    assert "journalgate::trace" in traced, traced[-2000:]
    assert m["password"] not in traced, "the trace logged the POP3 password"
    assert re.search(r"PASS \*\*\*", traced), f"PASS not masked as ***:\n{traced[-2000:]}"

    t = con.api_ok("POST", "trace", {"protocol": "pop3", "on": False})
    assert t["protocol"] == "pop3" and "until" in t, t
    assert t["until"] is None or rfc3339(t["until"]) <= now_utc() + datetime.timedelta(seconds=1), \
        f"trace off, yet until is in the future: {t}"
    mark = len(gw.log_text())
    pop3_fetch_all(gw, m)
    time.sleep(0.5)
    assert "journalgate::trace" not in gw.log_text()[mark:], "still tracing after off"


# --------------------------------------------------------------------------- auth


WRITE_CALLS = [
    ("POST", "mailboxes", {"name": "ro", "description": ""}),
    ("PATCH", "mailboxes/{id}", {"name": "ro-renamed"}),
    ("PATCH", "mailboxes/{id}", {"status": "suspended"}),
    ("DELETE", "mailboxes/{id}", None),
    ("POST", "mailboxes/{id}/reset-password", None),
    ("POST", "users", {"email": "ro@contoso.example", "aliases": [], "name": "ro",
                       "auditor": False}),
    ("PATCH", "users/{login}", {"name": "ro"}),
    ("DELETE", "users/{login}", None),
    ("POST", "users/{login}/reset-password", None),
    ("POST", "certificate/renew", None),
    ("POST", "certificate", {"cert_pem": "x", "key_pem": "y"}),
    ("POST", "trace", {"protocol": "smtp", "on": True}),
]

READ_CALLS = ["status", "mailboxes", "mailboxes/{id}", "users", "users/{login}", "certificate",
              "events", "events?kind=accepted&limit=5", "alerts"]


def test_read_only_token(console_gw):
    con = console_gw(imap=True)
    gw = con.gw
    m = con.create_mailbox("read-only target")
    u = con.api_ok("POST", "users", {"email": "bob@contoso.example", "aliases": [], "name": "Bob",
                                     "auditor": False}, status=201)
    fill = {"id": m["id"], "login": u["login"]}
    for path in READ_CALLS:
        p = path.format(**fill)
        r = con.api("GET", p, token=con.ro_token)
        assert r.status == 200, f"read-only GET {p}: {r!r}"
        code, _ = con.curl_api("GET", p, token=con.ro_token)
        assert code == 200, f"read-only GET {p} (curl): {code}"
    for method, path, body in WRITE_CALLS:
        p = path.format(**fill)
        assert_error(con.api(method, p, body=body, token=con.ro_token), "read_only")
        code, out = con.curl_api(method, p, body=body, token=con.ro_token)
        assert code == 403 and json.loads(out)["error"]["code"] == "read_only", (method, p, out)
    # nothing changed: same mailbox, same password, no trace, one user
    assert_mailbox(con.mailbox(m["id"]), name="read-only target", status="active")
    assert pop3_fetch_all(gw, m) == []
    assert [x["login"] for x in con.api_ok("GET", "users")["users"]] == [u["login"]]
    imap_user(gw, u["login"], u["password"]).logout()
    assert "journalgate::trace" not in gw.log_text()


def test_no_or_bad_token_is_401(console_gw):
    con = console_gw()
    m = con.create_mailbox("auth")
    fill = {"id": m["id"], "login": "nobody@contoso.example"}
    bad_headers = [None, {"Authorization": "Bearer not-a-real-token"},
                   {"Authorization": f"Bearer {con.token}x"},
                   {"Authorization": f"Basic {con.token}"},
                   {"Authorization": f"bearer{con.token}"}]
    for h in bad_headers:
        for path in READ_CALLS:
            r = con.api("GET", path.format(**fill), token=None, headers=h)
            assert_error(r, "unauthorized")
        for method, path, body in WRITE_CALLS:
            r = con.api(method, path.format(**fill), body=body, token=None, headers=h)
            assert_error(r, "unauthorized")
    code, out = con.curl_api("GET", "status", token=None)
    assert code == 401 and json.loads(out)["error"]["code"] == "unauthorized", out
    # still there, untouched
    assert_mailbox(con.mailbox(m["id"]), name="auth")
    # the OpenAPI document needs no token
    assert con.api("GET", "openapi.json", token=None).status == 200


def test_token_cli_list_and_revoke(console_gw):
    con = console_gw()
    gw = con.gw
    listing = gw.cli("token", "list")["tokens"]
    names = {t["name"]: t for t in listing}
    assert set(names) == {"e2e-rw", "e2e-ro"}, listing
    assert names["e2e-ro"]["read_only"] is True and names["e2e-rw"]["read_only"] is False
    for t in listing:
        assert set(t) >= {"name", "read_only", "created", "last_used"}, t
        assert "token" not in t, f"token list shows the secret: {t}"
    assert con.token not in json.dumps(listing)
    stored = (gw.data_dir / "console" / "tokens.json").read_text()
    assert con.token not in stored and con.ro_token not in stored, \
        "tokens.json holds a token in clear (only its SHA-256 should be stored)"

    con.api_ok("GET", "status", token=con.ro_token)
    used = {t["name"]: t for t in gw.cli("token", "list")["tokens"]}
    assert used["e2e-ro"]["last_used"] is not None, used
    rfc3339(used["e2e-ro"]["last_used"])

    rc, out, err = gw.cli_raw("token", "revoke", "e2e-ro", json_flag=False)
    assert rc == 0, (out, err)
    wait_until(lambda: con.api("GET", "status", token=con.ro_token).status == 401, timeout=10,
               what="a revoked token to be refused")
    assert_error(con.api("GET", "status", token=con.ro_token), "unauthorized")
    assert con.api("GET", "status").status == 200, "revoking one token broke the other"
    assert {t["name"] for t in gw.cli("token", "list")["tokens"]} == {"e2e-rw"}
    # a token made while the server runs works at once
    fresh = con.make_token("made-later", read_only=True)
    assert con.api("GET", "status", token=fresh).status == 200


def test_session_cookie_works_for_the_api_with_csrf_header(console_gw):
    con = console_gw()
    s = con.login()
    r = s.api("GET", "status")
    assert r.status == 200 and r.json()["hostname"] == HOSTNAME, r
    assert_error(s.api("POST", "mailboxes", {"name": "no-csrf", "description": ""}, csrf=False),
                 "csrf")
    r = s.request("POST", f"{API}/mailboxes", body=json.dumps({"name": "bad", "description": ""}),
                  headers={"Content-Type": "application/json", "X-CSRF-Token": "forged"})
    assert_error(r, "csrf")
    assert con.api_ok("GET", "mailboxes")["mailboxes"] == []
    r = s.api("POST", "mailboxes", {"name": "with-csrf", "description": ""})
    assert r.status == 201, r
    assert [x["name"] for x in con.api_ok("GET", "mailboxes")["mailboxes"]] == ["with-csrf"]


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_validates_and_covers_the_contract(console_gw):
    from openapi_spec_validator import validate

    con = console_gw()
    r = con.request("GET", f"{API}/openapi.json")
    assert r.status == 200, r
    assert "json" in (r.header("content-type") or ""), r.header("content-type")
    doc = r.json()
    assert str(doc.get("openapi", "")).startswith("3.0"), f"openapi version {doc.get('openapi')!r}"
    validate(doc)  # raises OpenAPIValidationError with the reason
    paths = {normalise_template(p): item for p, item in doc["paths"].items()}
    servers = [s.get("url", "") for s in doc.get("servers", [])]
    prefix = "/api/v1" if any(s.rstrip("/").endswith("/api/v1") for s in servers) else ""
    missing = []
    for method, path in CONTRACT_ENDPOINTS:
        key = normalise_template(path[len(prefix):] if prefix else path)
        if key not in paths or method not in {k.lower() for k in paths[key]}:
            missing.append(f"{method.upper()} {path}")
    assert not missing, f"the OpenAPI document lacks: {missing}; it has {sorted(doc['paths'])}"
    # every operation that needs auth says so; the document itself is public
    assert doc.get("components", {}).get("securitySchemes"), "no securitySchemes (bearer)"
