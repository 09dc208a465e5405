"""/healthz, /readyz and /metrics (docs/CONSOLE.md, "Health and metrics"): who may scrape, the
values of the contract's families after real deliveries and collections, `promtool check
metrics`, and a real Prometheus scraping the gateway with a Bearer token."""

from __future__ import annotations

import contextlib
import poplib
import smtplib
import subprocess
import time

import pytest

from consoleharness import (  # noqa: F401  (console_gw and prometheus are fixtures)
    console_gw, non_loopback_ipv4, parse_metrics, prometheus, require_tool, rfc3339,
)
from jgharness import (
    HOSTNAME, make_message, pop3_login, pop3_retr, send_smtp, wait_until,
)

UNLABELLED_FAMILIES = [
    "journalgate_smtp_bytes_total", "journalgate_delivery_fsync_seconds",
    "journalgate_archive_items", "journalgate_archive_pending",
    "journalgate_archive_untrusted_reports_total", "journalgate_archive_recovery_key",
    "journalgate_certificate_expiry_timestamp_seconds", "journalgate_disk_free_bytes",
]
LABELLED_FAMILIES = {
    "journalgate_smtp_messages_accepted_total": {"mailbox"},
    "journalgate_smtp_rejected_total": {"reason"},
    "journalgate_mailbox_messages": {"mailbox"},
    "journalgate_mailbox_bytes": {"mailbox"},
    "journalgate_mailbox_last_received_timestamp_seconds": {"mailbox"},
    "journalgate_mailbox_last_collected_timestamp_seconds": {"mailbox"},
    "journalgate_logins_total": {"protocol", "result"},
    "journalgate_sessions": {"protocol"},
}
TYPES = {
    "journalgate_smtp_messages_accepted_total": "counter",
    "journalgate_smtp_rejected_total": "counter",
    "journalgate_smtp_bytes_total": "counter",
    "journalgate_mailbox_messages": "gauge",
    "journalgate_mailbox_bytes": "gauge",
    "journalgate_mailbox_last_received_timestamp_seconds": "gauge",
    "journalgate_mailbox_last_collected_timestamp_seconds": "gauge",
    "journalgate_logins_total": "counter",
    "journalgate_sessions": "gauge",
    "journalgate_delivery_fsync_seconds": "histogram",
    "journalgate_archive_items": "gauge",
    "journalgate_archive_pending": "gauge",
    "journalgate_archive_untrusted_reports_total": "counter",
    "journalgate_archive_recovery_key": "gauge",
    "journalgate_certificate_expiry_timestamp_seconds": "gauge",
    "journalgate_disk_free_bytes": "gauge",
    "journalgate_alerts_firing": "gauge",
}


def check_ok(v) -> bool:
    """A /readyz check value that says 'passed' (true, "ok", or {"ok": true} / status ok)."""
    if v is True:
        return True
    if isinstance(v, str):
        return v.lower() in ("ok", "pass", "passed", "up", "true")
    if isinstance(v, dict):
        if "ok" in v:
            return v["ok"] is True
        if "status" in v:
            return str(v["status"]).lower() in ("ok", "pass", "passed", "up")
        if "ready" in v:
            return v["ready"] is True
    return False


def type_of(m, fam: str) -> str | None:
    """The TYPE of a family; counters may be declared with or without the _total suffix."""
    return m.types.get(fam) or (m.types.get(fam[:-6]) if fam.endswith("_total") else None)


# --------------------------------------------------------------------------- health


def test_healthz_and_readyz(console_gw):
    con = console_gw()
    r = con.get("/healthz")
    assert r.status == 200 and r.text.strip() == "ok", r
    r = con.get("/readyz")
    assert r.status == 200, r
    j = r.json()
    assert j.get("ready") is True, j
    checks = j.get("checks")
    assert isinstance(checks, dict) and checks, f"no checks in /readyz: {j}"
    failed = {k: v for k, v in checks.items() if not check_ok(v)}
    assert not failed, f"/readyz says ready but these checks did not pass: {failed}"
    names = " ".join(checks).lower()
    for what in ("listen", "disk", "cert"):
        assert what in names, f"/readyz has no {what}* check: {sorted(checks)}"
    # no auth needed for either, also over plain HTTP from loopback
    assert con.request("GET", "/readyz", tls=False).status == 200


def test_readyz_503_when_disk_is_below_the_reserve(console_gw):
    con = console_gw({"spool": {"min_free_bytes": 1 << 62}})
    r = con.get("/readyz")
    assert r.status == 503, r
    j = r.json()
    assert j.get("ready") is False, j
    checks = j.get("checks") or {}
    failed = [k for k, v in checks.items() if not check_ok(v)]
    assert failed and all("disk" in k.lower() for k in failed), \
        f"expected only the disk check to fail: {checks}"
    assert con.get("/healthz").status == 200, "healthz must stay 200 while the process serves"
    st = con.api_ok("GET", "status")
    assert st["disk"]["reserve_bytes"] == 1 << 62, st["disk"]


# --------------------------------------------------------------------------- who may scrape


def test_metrics_need_a_token_outside_scrape_networks(console_gw):
    con = console_gw({"console": {"scrape_networks": []}})
    r = con.get("/metrics")
    assert r.status == 401, f"/metrics without a token (scrape_networks = []): {r!r}"
    assert con.get("/metrics", token="not-a-token").status == 401
    for tok in (con.ro_token, con.token):
        r = con.get("/metrics", token=tok)
        assert r.status == 200, r
        ct = r.header("content-type") or ""
        assert ct.startswith("text/plain") and "version=0.0.4" in ct, f"Content-Type {ct!r}"
        parse_metrics(r.text)
    p = con.curl("-H", f"Authorization: Bearer {con.ro_token}", con.base_url + "/metrics")
    assert p.returncode == 0 and b"journalgate_" in p.stdout, p.stderr


def test_metrics_open_to_loopback_by_default(console_gw):
    con = console_gw()
    r = con.get("/metrics")
    assert r.status == 200, f"loopback is in the default scrape_networks: {r!r}"
    parse_metrics(r.text)


def test_metrics_from_outside_the_default_scrape_networks(console_gw):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    con = console_gw(host=ip)
    assert con.get("/metrics").status == 401, "a non-loopback client scraped without a token"
    assert con.get("/metrics", token=con.ro_token).status == 200
    con2 = console_gw({"console": {"scrape_networks": [f"{ip}/32"]}}, host=ip)
    assert con2.get("/metrics").status == 200, "a client in scrape_networks was refused"


# --------------------------------------------------------------------------- values


def deliver(gw, mbx, n, tag) -> int:
    size = 0
    for i in range(n):
        msg = make_message(subject=f"{tag} {i}", body=f"metrics body {tag} {i}\r\n" * 20)
        send_smtp(gw, mbx["address"], msg)
        size += len(msg)
    return size


def test_metric_values_after_deliveries_and_a_pop3_collection(console_gw):
    con = console_gw({"console": {"scrape_networks": []}})
    gw = con.gw
    a = con.create_mailbox("metrics-a")
    b = con.create_mailbox("metrics-b")
    t0 = time.time()
    size = deliver(gw, a, 3, "a") + deliver(gw, b, 1, "b")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_smtp(gw, f"mbx-{'0' * 32}@{HOSTNAME}", make_message(subject="to nobody"))
    with pytest.raises(poplib.error_proto):
        pop3_login(gw, a["id"], "wrong password")
    t_collect = time.time()
    p = pop3_login(gw, a["id"], a["password"])
    try:
        for n in (1, 2, 3):
            pop3_retr(p, n)
        p.dele(1)
        p.quit()
    finally:
        with contextlib.suppress(Exception):
            p.close()
    time.sleep(0.2)
    m = con.metrics()

    for fam, want in TYPES.items():
        if fam == "journalgate_alerts_firing":
            continue
        assert type_of(m, fam) == want, f"# TYPE of {fam} is {type_of(m, fam)!r}, expected {want}"
    for fam in UNLABELLED_FAMILIES:
        assert m.has_family(fam), f"family {fam} missing"
    for fam, labels in LABELLED_FAMILIES.items():
        found = m.find(fam)
        assert found, f"no sample of {fam}"
        for s in found:
            assert set(s.labels) >= labels, f"{s} lacks labels {labels}"

    acc = "journalgate_smtp_messages_accepted_total"
    assert m.mailbox(acc, a) == 3, f"{acc} for a: {m.find(acc)}"
    assert m.mailbox(acc, b) == 1, f"{acc} for b: {m.find(acc)}"
    assert m.sum("journalgate_smtp_rejected_total") >= 1, m.find("journalgate_smtp_rejected_total")
    assert all(s.labels.get("reason") for s in m.find("journalgate_smtp_rejected_total"))
    assert m.get("journalgate_smtp_bytes_total") >= size, (m.get("journalgate_smtp_bytes_total"),
                                                           size)

    msgs = "journalgate_mailbox_messages"
    assert m.mailbox(msgs, a) == 2, f"{msgs}: {m.find(msgs)} (3 delivered, 1 deleted)"
    assert m.mailbox(msgs, b) == 1, m.find(msgs)
    api_b = con.mailbox(b["id"])
    assert m.mailbox("journalgate_mailbox_bytes", b) == api_b["bytes"] > 0, \
        (m.find("journalgate_mailbox_bytes"), api_b)
    assert m.mailbox("journalgate_mailbox_bytes", a) == con.mailbox(a["id"])["bytes"]

    now = time.time()
    lr = m.mailbox("journalgate_mailbox_last_received_timestamp_seconds", a)
    assert lr is not None and t0 - 1 <= lr <= now + 1, (lr, t0, now)
    assert abs(lr - rfc3339(con.mailbox(a["id"])["last_received"]).timestamp()) < 2
    lc = m.mailbox("journalgate_mailbox_last_collected_timestamp_seconds", a)
    assert lc is not None and t_collect - 1 <= lc <= now + 1, (lc, t_collect, now)
    lc_b = m.mailbox("journalgate_mailbox_last_collected_timestamp_seconds", b)
    assert not lc_b, f"b was never collected, yet last_collected is {lc_b}"

    logins = "journalgate_logins_total"
    assert m.sum(logins, protocol="pop3", result="ok") >= 1, m.find(logins)
    failed = sum(s.value for s in m.find(logins, protocol="pop3") if s.labels["result"] != "ok")
    assert failed >= 1, f"the failed POP3 login is not counted: {m.find(logins)}"
    assert m.find("journalgate_sessions", protocol="pop3"), m.find("journalgate_sessions")

    count = m.get("journalgate_delivery_fsync_seconds_count")
    assert count is not None and count >= 4, f"fsync histogram count {count}"
    buckets = sorted(((float(s.labels["le"]), s.value)
                      for s in m.find("journalgate_delivery_fsync_seconds_bucket")))
    assert buckets and buckets[-1][0] == float("inf") and buckets[-1][1] == count, buckets
    assert all(x[1] <= y[1] for x, y in zip(buckets, buckets[1:])), "buckets not cumulative"
    assert m.get("journalgate_delivery_fsync_seconds_sum") >= 0

    assert m.get("journalgate_archive_recovery_key") == 0
    exp = m.get("journalgate_certificate_expiry_timestamp_seconds")
    cert = con.api_ok("GET", "certificate")
    assert exp > time.time() and abs(exp - rfc3339(cert["not_after"]).timestamp()) < 2, (exp, cert)
    assert m.get("journalgate_disk_free_bytes") > 0

    # gauges come from the spool after a restart; counters start again
    gw.restart()
    con.wait_healthy()
    m2 = con.metrics()
    assert m2.mailbox(msgs, a) == 2 and m2.mailbox(msgs, b) == 1, m2.find(msgs)


def test_promtool_check_metrics(console_gw):
    tools = require_tool("promtool")
    con = console_gw()
    m = con.create_mailbox("promtool")
    deliver(con.gw, m, 2, "promtool")
    text = con.get("/metrics", token=con.ro_token).text
    parse_metrics(text)
    p = subprocess.run([tools["promtool"], "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, \
        f"promtool check metrics:\n{p.stdout.decode()}\n{p.stderr.decode()}\n---\n{text[:3000]}"


def test_prometheus_scrapes_with_a_read_only_token(console_gw, prometheus):
    con = console_gw({"console": {"scrape_networks": []}})
    m = con.create_mailbox("scraped")
    deliver(con.gw, m, 2, "prom")
    prom = prometheus(f"127.0.0.1:{con.port}",
                      jobs={"journalgate": con.ro_token, "no-token": None})
    t = prom.wait_target_up("journalgate")
    assert t["scrapeUrl"].startswith("https://"), t
    bad = prom.wait_target("no-token", health="down")
    assert "401" in bad.get("lastError", ""), f"the token-less scrape failed otherwise: {bad}"

    def accepted():
        res = prom.query('sum(journalgate_smtp_messages_accepted_total{job="journalgate"})')
        return res and float(res[0]["value"][1]) == 2 and res
    wait_until(accepted, timeout=30, interval=0.5,
               what="PromQL sum(journalgate_smtp_messages_accepted_total) == 2")
    per = prom.query('journalgate_smtp_messages_accepted_total{job="journalgate"}')
    assert len(per) == 1 and float(per[0]["value"][1]) == 2, per
    assert per[0]["metric"].get("mailbox") in (m["id"], m["address"], m["name"]), per
    up = prom.query('up{job="journalgate"}')
    assert up and up[0]["value"][1] == "1", up
    deliver(con.gw, m, 1, "prom-more")
    wait_until(lambda: (r := prom.query('sum(journalgate_smtp_messages_accepted_total'
                                        '{job="journalgate"})')) and float(r[0]["value"][1]) == 3,
               timeout=30, interval=0.5, what="the third delivery in Prometheus")
    used = {t["name"]: t for t in con.gw.cli("token", "list")["tokens"]}
    assert used["e2e-ro"]["last_used"] is not None, used
