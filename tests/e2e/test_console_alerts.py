"""Alerts (docs/CONSOLE.md, "Alerts"): checks run every second with thresholds of a few seconds;
notices go to a local webhook receiver and, through a local plain SMTP sink as the relay, by
e-mail. Firing alerts also show in /api/v1/alerts, /api/v1/status, the dashboard and
journalgate_alerts_firing."""

from __future__ import annotations

import contextlib
import json
import poplib
import time

import pytest

from consoleharness import (  # noqa: F401  (fixtures: console_gw, webhook, smtp_sink)
    alerts_section, console_gw, rfc3339, smtp_sink, webhook,
)
from jgharness import HOSTNAME, free_port, make_message, pop3_login, pop3_retr, send_smtp, wait_until

SHORT = 0.002  # hours: 7.2 s
FIRE_TIMEOUT = 45


def about(m: dict):
    """A predicate builder: notices about mailbox m."""
    return lambda b: b.get("mailbox") in (m["id"], m["address"])


def notice(alert: str, state: str, m: dict | None = None):
    def pred(b):
        return b.get("alert") == alert and b.get("state") == state and (
            m is None or about(m)(b))
    return pred


def mail_about(alert: str, state: str):
    word = state.upper()
    return lambda msg: f"[journalgate] {word} {alert}" in " ".join(msg.subject.split())


def check_webhook_body(b: dict, alert: str, state: str):
    assert set(b) >= {"alert", "state", "message", "since", "host"}, f"webhook body: {b}"
    assert b["alert"] == alert and b["state"] == state, b
    assert isinstance(b["message"], str) and b["message"], b
    rfc3339(b["since"])
    assert b["host"] == HOSTNAME, f"webhook host {b['host']!r}, expected {HOSTNAME}"


def check_mail(msg, alert: str, state: str):
    subj = " ".join(msg.subject.split())
    assert subj.startswith(f"[journalgate] {state.upper()} {alert}"), subj
    assert msg.rcpts == ["ops@example.test"], msg.rcpts
    assert msg.mail_from == f"journalgate@{HOSTNAME}", msg.mail_from
    assert "ops@example.test" in str(msg.msg.get("To", "")), msg.msg.get("To")
    assert msg.msg.get("Date") and msg.msg.get("Message-ID"), "alert e-mail lacks Date/Message-ID"


def firing_value(con, alert: str) -> float:
    return con.metrics().sum("journalgate_alerts_firing", alert=alert)


def api_firing(con, alert: str, m: dict | None = None) -> list[dict]:
    out = []
    for a in con.alerts():
        assert set(a) >= {"alert", "state", "message", "since"}, a
        if a["alert"] == alert and (m is None or a.get("mailbox") in (m["id"], m["address"])):
            assert a["state"] == "firing", a
            out.append(a)
    return out


def collect_all(gw, m):
    p = pop3_login(gw, m["id"], m["password"])
    try:
        count = p.stat()[0]
        for n in range(1, count + 1):
            pop3_retr(p, n)
            p.dele(n)
        p.quit()
    finally:
        with contextlib.suppress(Exception):
            p.close()


# --------------------------------------------------------------------------- per mailbox


def test_silent_mailbox_fires_and_resolves(console_gw, webhook, smtp_sink):
    con = console_gw({"alerts": alerts_section(webhook, smtp_sink, silence_hours=SHORT)})
    gw = con.gw
    m = con.create_mailbox("quiet-journal")
    created = time.monotonic()

    fired = webhook.wait_for(notice("mailbox_silent", "firing", m), timeout=FIRE_TIMEOUT,
                             what="a mailbox_silent firing webhook")
    took = time.monotonic() - created
    assert took >= SHORT * 3600 - 2, f"mailbox_silent fired after {took:.1f} s, before the " \
                                     f"{SHORT * 3600:.1f} s of silence were over"
    check_webhook_body(fired, "mailbox_silent", "firing")
    mail = smtp_sink.wait_for(mail_about("mailbox_silent", "firing"),
                              what="a FIRING mailbox_silent e-mail")
    check_mail(mail, "mailbox_silent", "firing")
    assert m["id"] in mail.subject + mail.body_text() or m["name"] in mail.subject + \
        mail.body_text(), "the e-mail does not say which mailbox"

    listed = api_firing(con, "mailbox_silent", m)
    assert len(listed) == 1, con.alerts()
    assert abs((rfc3339(listed[0]["since"]) - rfc3339(fired["since"])).total_seconds()) < 1.5, \
        (listed, fired)
    st = con.api_ok("GET", "status")
    assert any(a["alert"] == "mailbox_silent" for a in st["alerts"]), st["alerts"]
    assert firing_value(con, "mailbox_silent") == 1
    s = con.login()
    _, dash = s.page("/")
    section = dash.one("section#alerts").text()
    assert "mailbox_silent" in section or m["name"] in section or m["id"] in section, section

    # a delivery ends it: a resolved notice by both channels
    send_smtp(gw, m["address"], make_message(subject="the journal rule works again"))
    resolved = webhook.wait_for(notice("mailbox_silent", "resolved", m), timeout=20,
                                what="a mailbox_silent resolved webhook")
    check_webhook_body(resolved, "mailbox_silent", "resolved")
    assert api_firing(con, "mailbox_silent", m) == [], con.alerts()
    assert firing_value(con, "mailbox_silent") == 0
    mail = smtp_sink.wait_for(mail_about("mailbox_silent", "resolved"),
                              what="a RESOLVED mailbox_silent e-mail")
    check_mail(mail, "mailbox_silent", "resolved")
    # resend_hours = 24: the alert was sent once while it lasted
    firing = [b for b in webhook.bodies() if b and notice("mailbox_silent", "firing", m)(b)
              and abs((rfc3339(b["since"]) - rfc3339(fired["since"])).total_seconds()) < 1.5]
    assert len(firing) == 1, firing


def test_uncollected_mailbox_fires_and_collecting_resolves(console_gw, webhook, smtp_sink):
    con = console_gw({"alerts": alerts_section(webhook, smtp_sink, uncollected_hours=SHORT)})
    gw = con.gw
    m = con.create_mailbox("never-collected")
    empty = con.create_mailbox("empty")
    send_smtp(gw, m["address"], make_message(subject="waiting to be collected"))

    fired = webhook.wait_for(notice("mailbox_uncollected", "firing", m), timeout=FIRE_TIMEOUT,
                             what="a mailbox_uncollected firing webhook")
    check_webhook_body(fired, "mailbox_uncollected", "firing")
    mail = smtp_sink.wait_for(mail_about("mailbox_uncollected", "firing"),
                              what="a FIRING mailbox_uncollected e-mail")
    check_mail(mail, "mailbox_uncollected", "firing")
    assert len(api_firing(con, "mailbox_uncollected", m)) == 1, con.alerts()
    assert firing_value(con, "mailbox_uncollected") == 1
    assert not any(about(empty)(b) for b in webhook.bodies() if b), \
        "an empty mailbox was reported as uncollected"

    collect_all(gw, m)
    resolved = webhook.wait_for(notice("mailbox_uncollected", "resolved", m), timeout=20,
                                what="a mailbox_uncollected resolved webhook")
    check_webhook_body(resolved, "mailbox_uncollected", "resolved")
    mail = smtp_sink.wait_for(mail_about("mailbox_uncollected", "resolved"),
                              what="a RESOLVED mailbox_uncollected e-mail")
    check_mail(mail, "mailbox_uncollected", "resolved")
    assert api_firing(con, "mailbox_uncollected") == [], con.alerts()
    assert firing_value(con, "mailbox_uncollected") == 0


def test_firing_alert_is_resent_every_resend_hours(console_gw, webhook, smtp_sink):
    con = console_gw({"alerts": alerts_section(webhook, smtp_sink, silence_hours=SHORT,
                                               resend_hours=0.001)})
    m = con.create_mailbox("resend")
    first = webhook.wait_for(notice("mailbox_silent", "firing", m), timeout=FIRE_TIMEOUT,
                             what="the first firing notice")

    def twice():
        f = [b for b in webhook.bodies() if b and notice("mailbox_silent", "firing", m)(b)]
        return len(f) >= 2 and f
    notices = wait_until(twice, timeout=30, interval=0.2, what="a second firing notice")
    assert all(abs((rfc3339(b["since"]) - rfc3339(first["since"])).total_seconds()) < 1.5
               for b in notices), \
        f"a resent notice has another 'since': {notices}"
    wait_until(lambda: len([x for x in smtp_sink.all()
                            if mail_about("mailbox_silent", "firing")(x)]) >= 2,
               timeout=30, what="a second FIRING e-mail")
    assert not [b for b in webhook.bodies() if b and notice("mailbox_silent", "resolved", m)(b)]


# --------------------------------------------------------------------------- gateway-wide


def test_disk_certificate_and_login_failure_alerts(console_gw, webhook, smtp_sink):
    section = alerts_section(webhook, smtp_sink, disk_free_bytes=1 << 62, cert_days=100000,
                             login_failures_per_hour=3)
    con = console_gw({"alerts": section,
                      "auth": {"failure_delay_ms": 0, "max_failure_delay_ms": 0}})
    gw = con.gw
    for alert in ("disk_low", "certificate_expiring"):
        b = webhook.wait_for(notice(alert, "firing"), timeout=FIRE_TIMEOUT,
                             what=f"a {alert} firing webhook")
        check_webhook_body(b, alert, "firing")
        assert "mailbox" not in b or b["mailbox"] is None, b
    m = con.create_mailbox("login target")
    for i in range(5):
        with pytest.raises(poplib.error_proto):
            pop3_login(gw, m["id"], f"wrong-{i}")
    b = webhook.wait_for(notice("login_failures", "firing"), timeout=FIRE_TIMEOUT,
                         what="a login_failures firing webhook")
    check_webhook_body(b, "login_failures", "firing")
    for alert in ("disk_low", "certificate_expiring", "login_failures"):
        smtp_sink.wait_for(mail_about(alert, "firing"), what=f"a FIRING {alert} e-mail")
        assert api_firing(con, alert), f"{alert} not in /api/v1/alerts: {con.alerts()}"
        assert firing_value(con, alert) == 1, alert


# --------------------------------------------------------------------------- alerts test


def test_alerts_test_command_uses_every_channel(console_gw, webhook, smtp_sink):
    con = console_gw({"alerts": alerts_section(webhook, smtp_sink)})
    out = con.gw.cli("alerts", "test")
    text = json.dumps(out).lower()
    assert "webhook" in text and ("email" in text or "e-mail" in text or "smtp" in text), out
    b = webhook.wait_for(lambda x: x.get("alert") == "test", timeout=20,
                         what="the test alert on the webhook")
    assert b.get("host") == HOSTNAME and isinstance(b.get("message"), str), b
    mail = smtp_sink.wait_for(lambda x: "test" in x.subject.lower(), timeout=20,
                              what="the test alert e-mail")
    assert mail.subject.startswith("[journalgate]"), mail.subject
    assert mail.rcpts == ["ops@example.test"], mail.rcpts
    # a test alert is not a firing alert
    assert not any(a["alert"] == "test" for a in con.alerts())


def test_alerts_test_reports_a_broken_channel(console_gw, smtp_sink):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    con = console_gw({"alerts": dict(alerts_section(None, smtp_sink), webhook_url=dead)})
    rc, out, err = con.gw.cli_raw("alerts", "test")
    smtp_sink.wait_for(lambda x: "test" in x.subject.lower(), timeout=20,
                       what="the test e-mail despite the dead webhook")
    said = (out + err).lower()
    assert "webhook" in said, (rc, out, err)
    assert rc != 0 or any(w in said for w in ("error", "fail", "refused")), \
        f"a dead webhook was reported as fine: rc={rc} {out} {err}"
