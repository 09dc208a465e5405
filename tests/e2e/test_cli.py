"""CLI: mailbox lifecycle, check, rebuild-index, config validation."""

from __future__ import annotations

import datetime
import os
import poplib
import smtplib
import subprocess

import pytest

from jgharness import (
    BIN, HOSTNAME, MBX_ID_RE, Gateway, RawSMTP, make_message, pop3_error_text,
    pop3_fetch_all, pop3_login, send_smtp, strip_received, to_toml,
)

MAILBOX_KEYS = {"id", "address", "name", "description", "status", "messages", "bytes",
                "created", "uidvalidity"}

server_state = pytest.mark.parametrize("running", [True, False], ids=["server-running", "server-stopped"])


def set_running(gw: Gateway, running: bool):
    if running and not gw.running:
        gw.start()
    elif not running and gw.running:
        gw.stop()


def rcpt_reply(gw: Gateway, address: str):
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        code, text = c.cmd("MAIL FROM:<journal@contoso.example>")
        assert code == 250, text
        return c.cmd(f"RCPT TO:<{address}>")


@server_state
def test_create_list_show(gw, running):
    set_running(gw, running)
    m = gw.create_mailbox(name="Journal EXO", description="journal reports from M365")
    assert set(m) >= {"id", "address", "password"}, m
    assert MBX_ID_RE.match(m["id"]), m["id"]
    assert m["address"] == f"{m['id']}@{HOSTNAME}"
    assert isinstance(m["password"], str) and len(m["password"]) >= 22, m["password"]

    m2 = gw.create_mailbox()
    assert m2["id"] != m["id"] and m2["password"] != m["password"]

    shown = gw.show(m["id"])
    assert set(shown) >= MAILBOX_KEYS, shown
    assert "password" not in shown
    assert shown["id"] == m["id"]
    assert shown["address"] == m["address"]
    assert shown["name"] == "Journal EXO"
    assert shown["description"] == "journal reports from M365"
    assert shown["status"] == "active"
    assert shown["messages"] == 0 and shown["bytes"] == 0
    created = datetime.datetime.fromisoformat(shown["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - created).total_seconds()) < 600, shown["created"]
    assert isinstance(shown["uidvalidity"], int) and shown["uidvalidity"] > 0

    listed = gw.cli("mailbox", "list")
    assert isinstance(listed.get("mailboxes"), list), listed
    by_id = {x["id"]: x for x in listed["mailboxes"]}
    assert set(by_id) == {m["id"], m2["id"]}
    for x in listed["mailboxes"]:
        assert set(x) >= MAILBOX_KEYS, x
    assert by_id[m["id"]]["name"] == "Journal EXO"

    rc, out, err = gw.cli_raw("mailbox", "show", "mbx-" + "0" * 32)
    assert rc == 1, (rc, out, err)

    # counters reflect stored mail
    set_running(gw, True)
    msg = make_message(subject="count me")
    send_smtp(gw, m["address"], msg)
    shown = gw.show(m["id"])
    assert shown["messages"] == 1
    assert shown["bytes"] >= len(msg), shown


def test_create_global_config_flag_after_subcommand(gw):
    # `--config` is global: it may also follow the subcommand.
    p = subprocess.run([str(BIN), "mailbox", "create", "--json", "--config", str(gw.config_path)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    import json
    m = json.loads(p.stdout)
    assert m["address"].endswith("@" + HOSTNAME)
    assert m["id"] in {x["id"] for x in gw.cli("mailbox", "list")["mailboxes"]}


@server_state
def test_suspend_resume_delete(gw, running):
    set_running(gw, running)
    m = gw.create_mailbox()
    mid = m["id"]

    r = gw.cli("mailbox", "suspend", mid)
    assert isinstance(r, dict)
    assert gw.show(mid)["status"] == "suspended"

    set_running(gw, True)
    code, text = rcpt_reply(gw, m["address"])
    assert code == 450 and "4.2.1" in text, text
    set_running(gw, running)

    gw.cli("mailbox", "resume", mid)
    assert gw.show(mid)["status"] == "active"

    set_running(gw, True)
    code, text = rcpt_reply(gw, m["address"])
    assert code == 250, text
    set_running(gw, running)

    # delete refused while active
    rc, out, err = gw.cli_raw("mailbox", "delete", mid)
    assert rc == 1, (rc, out, err)
    assert (err + out).strip(), "refusal should explain itself"
    assert mid in {x["id"] for x in gw.cli("mailbox", "list")["mailboxes"]}

    gw.cli("mailbox", "suspend", mid)
    gw.cli("mailbox", "delete", mid)
    assert mid not in {x["id"] for x in gw.cli("mailbox", "list")["mailboxes"]}
    rc, _, _ = gw.cli_raw("mailbox", "show", mid)
    assert rc == 1

    set_running(gw, True)
    code, text = rcpt_reply(gw, m["address"])
    assert code == 550 and "5.1.1" in text, text
    with pytest.raises(poplib.error_proto) as ei:
        pop3_login(gw, mid, m["password"])
    assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value


@server_state
def test_reset_password(gw, running):
    m = gw.create_mailbox()
    old = make_message(subject="sealed to old key", body="old body\r\n")
    send_smtp(gw, m["address"], old)

    set_running(gw, running)
    r = gw.cli("mailbox", "reset-password", m["id"])
    assert r["id"] == m["id"]
    new_pw = r["password"]
    assert len(new_pw) >= 22 and new_pw != m["password"]

    set_running(gw, True)
    with pytest.raises(poplib.error_proto) as ei:
        pop3_login(gw, m["id"], m["password"])
    assert pop3_error_text(ei.value).startswith(b"-ERR [AUTH]"), ei.value

    m_new = dict(m, password=new_pw)
    # messages sealed to the old key are moved aside, not served
    assert pop3_fetch_all(gw, m_new) == []

    new = make_message(subject="sealed to new key", body="new body \xe4\r\n")
    send_smtp(gw, m["address"], new)
    got = pop3_fetch_all(gw, m_new)
    assert len(got) == 1
    assert strip_received(got[0][1]) == new
    assert gw.show(m["id"])["messages"] == 1
    # the moved-aside messages are not damage
    rc, out, err = gw.cli_raw("check")
    assert rc == 0, (out, err)
    gw.restart()
    assert pop3_fetch_all(gw, m_new) == got


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(to_toml({"hostname": "gw.test", "data_dir": str(tmp_path / "data"),
                            "smtp": {"listen": [], "frobnicate_level": 3}}))
    for args in (["mailbox", "list", "--json"], ["check"], ["serve"]):
        p = subprocess.run([str(BIN), "--config", str(cfg), *args], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=30)
        assert p.returncode != 0, (args, p.stdout, p.stderr)
        assert "frobnicate_level" in p.stderr, (args, p.stderr)

    cfg.write_text('hostname = "gw.test"\nflux_capacitor = true\n')
    p = subprocess.run([str(BIN), "--config", str(cfg), "check"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode != 0 and "flux_capacitor" in p.stderr, (p.returncode, p.stderr)


def test_usage_error_exit_code(gw):
    rc, out, err = gw.cli_raw("mailbox", "no-such-subcommand", json_flag=False)
    assert rc == 2, (rc, out, err)


def _fill_spool(gw, n=3):
    m = gw.create_mailbox()
    msgs = [make_message(subject=f"spool {i}", body=f"body {i}\r\n" * (i + 1)) for i in range(n)]
    for msg in msgs:
        send_smtp(gw, m["address"], msg)
    return m, msgs


def test_check_healthy_running_and_stopped(gw):
    _fill_spool(gw)
    rc, out, err = gw.cli_raw("check")
    assert rc == 0, (out, err)
    gw.stop()
    rc, out, err = gw.cli_raw("check")
    assert rc == 0, (out, err)


@pytest.mark.parametrize("damage", ["bad-file-name", "truncated-message"])
def test_check_detects_damage(gw, damage):
    m, _ = _fill_spool(gw)
    gw.stop()
    assert gw.cli_raw("check")[0] == 0
    files = sorted(p for p in gw.msg_dir(m["id"]).iterdir() if p.is_file())
    assert len(files) == 3, files
    victim = files[1]
    if damage == "bad-file-name":
        victim.rename(victim.with_name("not-a-uid.garbage.age"))
    else:
        size = victim.stat().st_size
        with open(victim, "r+b") as f:
            f.truncate(size // 2)
    rc, out, err = gw.cli_raw("check")
    assert rc == 1, (damage, rc, out, err)


@pytest.mark.parametrize("how", ["rebuild-index", "rebuilt-at-start"])
def test_rebuild_index_keeps_uidl(gw, how):
    m, msgs = _fill_spool(gw, n=4)
    before = pop3_fetch_all(gw, m)
    assert len(before) == 4
    gw.stop()
    idx = gw.data_dir / "index.redb"
    assert idx.exists(), sorted(os.listdir(gw.data_dir))
    idx.unlink()
    if how == "rebuild-index":
        rc, out, err = gw.cli_raw("rebuild-index")
        assert rc == 0, (out, err)
        assert idx.exists()
        assert gw.cli_raw("check")[0] == 0
    gw.start()
    after = pop3_fetch_all(gw, m)
    assert after == before
    assert gw.show(m["id"])["messages"] == 4
    # new mail continues after the highest UID, not reusing one
    send_smtp(gw, m["address"], make_message(subject="after rebuild"))
    uids = [u for u, _ in pop3_fetch_all(gw, m)]
    assert uids[:4] == [u for u, _ in before]
    assert len(uids) == 5 and uids[4] not in uids[:4]
    uv = {u.split(".")[0] for u in uids}
    assert len(uv) == 1


def test_cli_while_running_sees_live_state(gw):
    """The CLI talks to the running server: a suspend is effective at once."""
    m = gw.create_mailbox()
    send_smtp(gw, m["address"], make_message())
    gw.cli("mailbox", "suspend", m["id"])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as ei:
        send_smtp(gw, m["address"], make_message())
    code, text = ei.value.recipients[m["address"]]
    assert code == 450 and b"4.2.1" in text


def test_rebuild_index_while_running(gw):
    m, msgs = _fill_spool(gw, n=3)
    before = pop3_fetch_all(gw, m)
    rc, out, err = gw.cli_raw("rebuild-index")
    assert rc == 0, (out, err)
    assert pop3_fetch_all(gw, m) == before
    extra = make_message(subject="after live rebuild")
    send_smtp(gw, m["address"], extra)
    after = pop3_fetch_all(gw, m)
    assert after[:3] == before and strip_received(after[3][1]) == extra
    assert gw.show(m["id"])["messages"] == 4
    assert gw.cli_raw("check")[0] == 0


def test_sigterm_exits_cleanly(gw):
    m = gw.create_mailbox()
    send_smtp(gw, m["address"], make_message())
    assert gw.stop() == 0, gw.log_tail()
    # and comes back with the same state
    gw.start()
    assert gw.show(m["id"])["messages"] == 1


def test_json_log_format(make_gw):
    import json
    gw = make_gw(log={"format": "json"})
    m = gw.create_mailbox()
    send_smtp(gw, m["address"], make_message())
    gw.stop()
    lines = [ln for ln in gw.stderr_path.read_text().splitlines()
             if ln.strip() and not ln.startswith("=== start")]
    assert lines, "no log lines on stderr"
    for ln in lines:
        obj = json.loads(ln)
        assert isinstance(obj, dict), ln


def test_cli_after_kill9_with_stale_admin_socket(gw):
    m = gw.create_mailbox()
    gw.kill9()
    # admin.sock may be left behind; the CLI must still work on its own
    listed = gw.cli("mailbox", "list")
    assert m["id"] in {x["id"] for x in listed["mailboxes"]}
    m2 = gw.create_mailbox()
    gw.cli("mailbox", "suspend", m2["id"])
    assert gw.show(m2["id"])["status"] == "suspended"
    gw.start()
    code, text = rcpt_reply(gw, m2["address"])
    assert code == 450 and "4.2.1" in text, text
    send_smtp(gw, m["address"], make_message())
    assert len(pop3_fetch_all(gw, m)) == 1


def test_default_config_file_and_human_output(gw):
    """Without --config the CLI reads ./journalgate.toml; without --json it prints text."""
    m = gw.create_mailbox()
    p = subprocess.run([str(BIN), "mailbox", "list", "--json"], cwd=gw.config_path.parent,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    import json
    assert m["id"] in {x["id"] for x in json.loads(p.stdout)["mailboxes"]}
    rc, out, err = gw.cli_raw("mailbox", "create", "--name", "human", json_flag=False)
    assert rc == 0, err
    ids = MBX_ID_RE.pattern.strip("^$")
    import re
    found = re.findall(ids, out)
    assert found, out
    assert found[0] in {x["id"] for x in gw.cli("mailbox", "list")["mailboxes"]}
    rc, out, err = gw.cli_raw("mailbox", "show", found[0], json_flag=False)
    assert rc == 0 and found[0] in out, (out, err)
