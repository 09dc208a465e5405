"""The web console in a real browser: headless Debian Chromium driven by selenium through
chromedriver, against a live gateway (self-signed certificate, or ACME from Pebble for the
renewal). A screenshot is saved after every step (the test's tmp dir, and $JG_TEST_OUTPUT/<test>/
when that is set)."""

from __future__ import annotations

import contextlib
import re
import socket
import time
import urllib.parse

import pytest

from archiveharness import journal_report, make_original
from consoleharness import (  # noqa: F401  (fixtures: browser, console_gw)
    Console, browser, console_gw, start_console,
)
from jgharness import (
    HOSTNAME, RawSMTP, free_port, pop3_fetch_all, pop3_login, send_smtp, to_toml, unverified_ctx,
    wait_until,
)


def rcpt_code(gw, address: str) -> int:
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        return c.cmd(f"RCPT TO:<{address}>")[0]


def element_value(el) -> str:
    return (el.text or "").strip() or (el.get_attribute("value") or "").strip()


def password_from(gw, mbx_id: str, shown: str) -> str:
    """The password among the words #new-password shows (the one POP3 accepts)."""
    cands = [shown.strip()] + re.findall(r"\S{16,}", shown)
    for c in dict.fromkeys(cands):
        try:
            p = pop3_login(gw, mbx_id, c)
        except Exception:
            continue
        with contextlib.suppress(Exception):
            p.quit()
        return c
    raise AssertionError(f"no word of #new-password ({shown!r}) opens mailbox {mbx_id}")


def dashboard_row(b, con: Console, mbx_id: str):
    b.get(con.base_url + "/")
    b.wait_css("table#mailboxes")
    return b.css(f"tr[data-mailbox='{mbx_id}']")


def chart_received(b) -> int:
    svg = b.css("section#chart svg")
    v = svg.get_attribute("data-received")
    assert v is not None and v.strip().isdigit(), f"section#chart svg data-received = {v!r}"
    return int(v)


def served_der(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with unverified_ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            return t.getpeercert(binary_form=True)


def click_without_waiting(b, form_sel: str):
    btn = b.submit_button(form_sel)
    assert btn is not None, f"{form_sel} has no submit button"
    btn.click()
    time.sleep(2)


# --------------------------------------------------------------------------- mailboxes


def test_mailbox_life_in_the_browser(console_gw, browser):
    con = console_gw()
    gw = con.gw
    b = browser
    base = con.base_url

    b.login(con)
    b.css("form#logout")
    for sec in ("chart", "rejects", "archive", "certificate", "disk", "listeners", "alerts"):
        b.css(f"section#{sec}")
    received0 = chart_received(b)
    b.shot("dashboard-empty")

    # create: the password is shown once, with the warning
    b.get(base + "/mailboxes")
    b.wait_css("form#create-mailbox")
    b.fill("form#create-mailbox", name="browser-box", description="made in Chromium")
    b.submit("form#create-mailbox")
    shown = element_value(b.wait_css("#new-password"))
    page = b.css("body").text.lower()
    assert any(w in page for w in ("lose", "losing", "lost")), \
        "no warning that losing the password loses uncollected mail"
    b.shot("mailbox-created")
    mbx = [m for m in con.api_ok("GET", "mailboxes")["mailboxes"] if m["name"] == "browser-box"]
    assert len(mbx) == 1, mbx
    mbx = mbx[0]
    assert mbx["description"] == "made in Chromium", mbx
    password = password_from(gw, mbx["id"], shown)
    b.get(base + "/mailboxes")
    b.wait_css("form#create-mailbox")
    assert not b.css_all("#new-password"), "the password is shown a second time"
    assert password not in b.source(), "the password is still in the page"

    # a journal report by SMTP shows on the dashboard and in the chart
    row = dashboard_row(b, con, mbx["id"])
    assert row.find_element("css selector", "td.messages").text.strip() == "0"
    assert row.find_element("css selector", "td.status").text.strip().lower() == "active"
    report = journal_report(original=make_original(subject="seen in the browser"))
    send_smtp(gw, mbx["address"], report)

    def updated(_):
        r = dashboard_row(b, con, mbx["id"])
        return r.find_element("css selector", "td.messages").text.strip() == "1"
    b.wait(updated, timeout=20, what="the dashboard row to show 1 message")
    row = b.css(f"tr[data-mailbox='{mbx['id']}']")
    assert row.find_element("css selector", "td.last-received").text.strip() not in ("", "-",
                                                                                      "never")
    assert row.find_element("css selector", "td.bytes").text.strip() not in ("", "0")
    assert chart_received(b) == received0 + 1, "the chart's data-received did not go up by one"
    b.shot("dashboard-after-delivery")

    b.get(base + f"/activity?mailbox={urllib.parse.quote(mbx['id'])}&kind=accepted")
    b.wait_css("table#events")
    kinds = [r.get_attribute("data-kind") for r in b.css_all("table#events tr[data-kind]")]
    assert kinds and set(kinds) == {"accepted"}, kinds
    b.shot("activity")

    # collected: the dashboard says when and how
    assert len(pop3_fetch_all(gw, {"id": mbx["id"], "password": password})) == 1
    row = dashboard_row(b, con, mbx["id"])
    assert row.find_element("css selector", "td.last-collected").text.strip() not in ("", "-",
                                                                                      "never")

    # suspend
    b.get(base + f"/mailboxes/{mbx['id']}")
    b.wait_css("form#edit-mailbox")
    assert not b.css_all("form#delete"), "form#delete is offered for an active mailbox"
    b.submit("form#suspend")
    b.wait_css("form#resume")
    assert con.mailbox(mbx["id"])["status"] == "suspended"
    assert rcpt_code(gw, mbx["address"]) == 450
    b.shot("suspended")

    # delete: not without the confirm box, then with it
    b.get(base + f"/mailboxes/{mbx['id']}")
    box = b.wait_css("form#delete [name=confirm]")
    if box.is_selected():
        box.click()
    click_without_waiting(b, "form#delete")
    assert con.api("GET", f"mailboxes/{mbx['id']}").status == 200, \
        "deleted without the confirm box"
    b.get(base + f"/mailboxes/{mbx['id']}")
    box = b.wait_css("form#delete [name=confirm]")
    if not box.is_selected():
        box.click()
    b.submit("form#delete")
    assert con.api("GET", f"mailboxes/{mbx['id']}").status == 404, "not deleted"
    b.get(base + "/")
    b.wait_css("table#mailboxes")
    assert not b.css_all(f"tr[data-mailbox='{mbx['id']}']"), "the deleted mailbox is still shown"
    b.shot("deleted")

    b.submit("form#logout")
    assert b.path() == "/login", b.driver.current_url
    b.get(base + "/")
    assert b.path() == "/login", "the dashboard is shown after logout"
    b.shot("logged-out")


# --------------------------------------------------------------------------- users, settings


def test_users_and_settings_in_the_browser(console_gw, browser):
    con = console_gw(imap=True)
    gw = con.gw
    b = browser
    base = con.base_url
    b.login(con)

    b.get(base + "/users")
    b.wait_css("form#create-user")
    b.fill("form#create-user", email="carol@contoso.example",
           aliases="c.jones@contoso.example, carol.j@contoso.example", name="Carol Jones")
    b.submit("form#create-user")
    shown = element_value(b.wait_css("#new-password"))
    assert shown, "#new-password is empty"
    b.shot("user-created")
    u = con.api_ok("GET", "users/carol@contoso.example")
    assert sorted(u["aliases"]) == ["c.jones@contoso.example", "carol.j@contoso.example"], u
    assert u["name"] == "Carol Jones" and u["auditor"] is False, u

    b.get(base + "/users/carol@contoso.example")
    b.wait_css("form#edit-user")
    b.fill("form#edit-user", aliases="c.jones@contoso.example", name="Carol J.")
    b.submit("form#edit-user")
    u = con.api_ok("GET", "users/carol@contoso.example")
    assert u["aliases"] == ["c.jones@contoso.example"] and u["name"] == "Carol J.", u
    b.get(base + "/users/carol@contoso.example")
    b.submit("form#reset-password")
    again = element_value(b.wait_css("#new-password"))
    assert again and again != shown, "reset-password showed no new password"
    b.shot("user-password-reset")
    b.get(base + "/users/carol@contoso.example")
    box = b.wait_css("form#delete [name=confirm]")
    if not box.is_selected():
        box.click()
    b.submit("form#delete")
    assert con.api("GET", "users/carol@contoso.example").status == 404
    b.shot("user-deleted")

    # settings: the effective configuration, and the protocol trace switch
    b.get(base + "/settings")
    pre = b.wait_css("pre#settings").text
    assert f'hostname = "{HOSTNAME}"' in pre, pre[:1000]
    assert con.password not in pre
    form = b.css("form#trace")
    press = None  # `action` may be two submit buttons (value on / off)
    for name, value in (("protocol", "pop3"), ("action", "on")):
        els = form.find_elements("css selector", f"[name={name}]")
        assert els, f"form#trace has no field {name}"
        typ = (els[0].get_attribute("type") or "").lower()
        if els[0].tag_name == "button" or typ == "submit":
            press = form.find_element("css selector", f"[name={name}][value={value}]")
        elif typ in ("radio", "checkbox"):
            b.set_field(form.find_element("css selector", f"[name={name}][value={value}]"), value)
        else:
            b.set_field(els[0], value)
    b.shot("trace-form")
    if press is not None:
        b.click_and_wait(press, "the page after turning the trace on")
    else:
        b.submit("form#trace")
    m = gw.create_mailbox(name="traced")
    mark = len(gw.log_text())
    pop3_fetch_all(gw, m)
    wait_until(lambda: "journalgate::trace" in gw.log_text()[mark:], timeout=10,
               what="POP3 trace lines after turning the trace on in the console")
    assert m["password"] not in gw.log_text()
    b.shot("trace-on")


# --------------------------------------------------------------------------- ACME renewal


def test_certificate_renewal_in_the_browser(make_gw, tmp_path, browser, request):
    from test_acme import Pebble, _PEBBLE_MISSING, wait_issued
    if _PEBBLE_MISSING:
        pytest.skip("pebble not installed (apt-get install pebble)")
    http_listen = free_port()
    con_port = free_port()
    g = make_gw({"tls": {"source": "acme"},
                 "acme": {"challenge": "http-01", "http_listen": f"127.0.0.1:{http_listen}",
                          "renew_before_days": 30},
                 "console": {"listen": f"127.0.0.1:{con_port}"}}, start=False)
    g.ports["console"] = con_port
    pb = Pebble(tmp_path / "pebble", http_port=http_listen, tls_port=g.smtps_port)
    request.addfinalizer(pb.stop)
    g.config["acme"].update({"directory": pb.directory, "ca_file": str(pb.ca_file)})
    g.config_path.write_text(to_toml(g.config))
    pb.start()
    con = start_console(Console(g))
    st = wait_issued(g)
    b = browser
    base = con.base_url

    b.login(con)
    b.get(base + "/certificate")
    b.wait_css("form#renew")
    assert not b.css_all("form#upload"), "form#upload offered for source = acme"
    api = con.api_ok("GET", "certificate")
    assert api["source"] == "acme" and "Pebble" in api["issuer"], api
    assert re.search(rf"\b{api['days_left']}\b", b.css("body").text), \
        f"/certificate does not show days_left {api['days_left']}"
    b.shot("certificate-issued")
    before = served_der(g.smtps_port)
    assert served_der(con.port) == before, "the console serves another certificate"

    b.submit("form#renew")
    wait_until(lambda: served_der(g.smtps_port) != before, timeout=90, interval=0.5,
               what="the renewed certificate on SMTPS")
    after = served_der(g.smtps_port)
    wait_until(lambda: served_der(con.port) == after, timeout=10,
               what="the renewed certificate on the console listener")
    api = con.api_ok("GET", "certificate")
    assert api["last_error"] is None and "Pebble" in api["issuer"], api
    assert api["days_left"] >= st["days_left"], (api, st)
    b.get(base + "/certificate")
    b.wait_css("form#renew")
    body = b.css("body").text
    assert re.search(rf"\b{api['days_left']}\b", body), \
        f"/certificate does not show days_left {api['days_left']}"
    b.shot("certificate-renewed")
    b.get(base + "/")
    sec = b.wait_css("section#certificate")
    assert sec.get_attribute("data-days-left") == str(api["days_left"]), \
        (sec.get_attribute("data-days-left"), api)
    b.shot("dashboard-certificate")
