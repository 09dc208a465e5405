"""Cluster mode on a real 3-node Garage cluster (replication factor 3) with two gateway
nodes, as two MX hosts would be: a mailbox made on one node takes mail on both; mail
acknowledged by either is collected from either, exactly once; a gateway node killed mid
delivery strands nothing it acknowledged; a Garage node down does not stop ingest; the store
unreachable gives 451s, never 250, and recovery is automatic; the POP3 lock holds across
nodes; IMAP UIDs are shared and never reused."""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import smtplib
import threading
import time

import pytest

from garageharness import Garage, available
from archiveharness import (add_user, archive_gw, folder_messages, imap_user,  # noqa: F401
                            journal_report, make_original)
from consoleharness import console_gw  # noqa: F401 (fixture)
from imapharness import make_igw  # noqa: F401 (fixture)
from jgharness import (HOSTNAME, build_message, free_port, pop3_fetch_all, pop3_login,
                       send_smtp, unverified_ctx, wait_until)

pytestmark = pytest.mark.skipif(not available(), reason="garage is not installed (the README's test command installs it)")


@pytest.fixture(scope="module")
def garage(tmp_path_factory):
    g = Garage(tmp_path_factory.mktemp("garage")).start()
    yield g
    g.stop()


@pytest.fixture
def node(make_gw, garage):
    """make node("a") -> a gateway node on the cluster, with IMAP on a fresh port."""
    def factory(name: str, endpoint_node: int = 0):
        imap = free_port()
        g = make_gw({**garage.storage_config(name, endpoint_node),
                     "imap": {"listen": [f"127.0.0.1:{imap}"], "listen_tls": []}})
        g.ports["imap"] = imap
        return g
    return factory


def address(mbx: dict) -> str:
    return f"{mbx['id']}@{HOSTNAME}"


def token_of(msg: bytes) -> str | None:
    for line in msg.split(b"\r\n"):
        if line.startswith(b"Subject: tok-"):
            return line[len(b"Subject: "):].decode()
    return None


def imap_login(g, mbx) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", g.imap_port, timeout=30)
    m.starttls(unverified_ctx())
    m.login(mbx["id"], mbx["password"])
    return m


def imap_uids(g, mbx) -> list[int]:
    m = imap_login(g, mbx)
    try:
        m.select("INBOX")
        typ, data = m.uid("SEARCH", "ALL")
        assert typ == "OK", data
        return [int(x) for x in data[0].split()]
    finally:
        with contextlib.suppress(Exception):
            m.logout()


def test_mailbox_made_on_one_node_takes_mail_on_both_and_is_collected_from_either(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox(name="tenant journal")
    # No wait for the registry sync: node b fetches an unknown mailbox from the store.
    send_smtp(b, address(mbx), build_message(subject="tok-via-b"))
    send_smtp(a, address(mbx), build_message(subject="tok-via-a"))
    got = pop3_fetch_all(a, mbx)
    assert sorted(token_of(m) for _, m in got) == ["tok-via-a", "tok-via-b"]
    # The same UIDLs on the other node, and the bytes as sent.
    again = pop3_fetch_all(b, mbx, delete=True)
    assert [u for u, _ in again] == [u for u, _ in got]
    assert all(b"hello" in m for _, m in again)
    assert pop3_fetch_all(a, mbx) == []


def _files_under(*dirs) -> bytes:
    out = b""
    for root in dirs:
        for dirpath, _, files in os.walk(root):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out += fh.read()
    return out


def test_the_store_holds_no_plaintext_address_subject_or_body(node, garage):
    a = node("node-a")
    mbx = a.create_mailbox()
    msg = build_message(subject="tok-secret-subject", body=b"body-plaintext-marker\r\n",
                        msgid="<unique-msgid-marker@contoso.example>")
    send_smtp(a, address(mbx), msg)
    assert pop3_fetch_all(a, mbx), "delivered"
    # Object keys live in Garage's metadata (sqlite), the bytes in its data blocks.
    meta = _files_under(*(garage.base / f"garage{i}" / "meta" for i in range(3)))
    data = _files_under(*(garage.base / f"garage{i}" / "data" for i in range(3)))
    assert mbx["id"].encode() in meta, "the store was really used"
    for secret in (b"tok-secret-subject", b"alice@contoso.example", b"journal@contoso.example",
                   b"body-plaintext-marker", b"unique-msgid-marker"):
        assert secret not in meta, secret
        assert secret not in data, secret


def test_kill9_of_a_gateway_node_during_4way_delivery_strands_nothing(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(k: int):
        n = 0
        while not stop.is_set() and n < 60:
            target = a if (n + k) % 2 == 0 else b
            tok = f"tok-{k}-{n}"
            n += 1
            try:
                send_smtp(target, address(mbx), build_message(subject=tok), timeout=30)
            except (OSError, smtplib.SMTPException):
                continue
            with lock:
                acked.append(tok)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 20, timeout=60, what="20 reports acknowledged")
    a.kill9()
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(120)
    got = pop3_fetch_all(b, mbx)
    tokens = [token_of(m) for _, m in got]
    missing = set(acked) - set(tokens)
    assert not missing, f"acknowledged but not collectable from the other node: {sorted(missing)}"
    dupes = {t for t in tokens if tokens.count(t) > 1}
    assert not dupes, f"collected twice: {dupes}"
    assert len(acked) >= 20


def test_a_garage_node_down_does_not_stop_ingest(node, garage):
    a = node("node-a", endpoint_node=0)
    mbx = a.create_mailbox()
    garage.kill_node(2)
    try:
        for i in range(15):
            send_smtp(a, address(mbx), build_message(subject=f"tok-q{i}"))
        got = pop3_fetch_all(a, mbx, delete=True)
        assert sorted(token_of(m) for _, m in got) == sorted(f"tok-q{i}" for i in range(15))
    finally:
        garage.start_node(2)
        time.sleep(2)


def test_store_unreachable_gives_451_never_250_and_recovers(node, garage):
    a = node("node-a", endpoint_node=1)
    mbx = a.create_mailbox()
    send_smtp(a, address(mbx), build_message(subject="tok-before"))
    endpoint = garage.nodes[1]["proc"]
    endpoint.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send_smtp(a, address(mbx), build_message(subject="tok-during"), timeout=90)
        assert refused.value.smtp_code in (451, 452), refused.value
    finally:
        endpoint.send_signal(signal.SIGCONT)
    # Recovers by itself: the next report is accepted, and collection works.
    wait_until(lambda: _sends(a, mbx, "tok-after"), timeout=60, what="ingest to recover")
    tokens = sorted(token_of(m) for _, m in pop3_fetch_all(a, mbx))
    assert "tok-before" in tokens and "tok-after" in tokens
    assert "tok-during" not in tokens or tokens.count("tok-during") == 1


def _sends(g, mbx, tok) -> bool:
    try:
        send_smtp(g, address(mbx), build_message(subject=tok), timeout=30)
        return True
    except (OSError, smtplib.SMTPException):
        return False


def test_pop3_lock_holds_across_nodes(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox()
    send_smtp(a, address(mbx), build_message(subject="tok-lock"))
    held = pop3_login(a, mbx["id"], mbx["password"])
    try:
        with pytest.raises(Exception) as refused:
            pop3_login(b, mbx["id"], mbx["password"])
        assert b"IN-USE" in str(refused.value).encode()
    finally:
        held.quit()
    # Released on QUIT: the other node gets it now.
    pop3_login(b, mbx["id"], mbx["password"]).quit()

    # A race: two archivers log in through different nodes at once, again and again;
    # never both in.
    for _ in range(8):
        results = {}
        barrier = threading.Barrier(2)

        def login(g, name):
            barrier.wait()
            try:
                p = pop3_login(g, mbx["id"], mbx["password"])
                results[name] = p
            except Exception as e:  # noqa: BLE001
                results[name] = e

        ts = [threading.Thread(target=login, args=(g, n)) for g, n in ((a, "a"), (b, "b"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        ok = [n for n, r in results.items() if not isinstance(r, Exception)]
        assert len(ok) <= 1, "both nodes granted the POP3 lock"
        for n in ok:
            results[n].quit()


def test_imap_uids_are_shared_and_never_reused(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox()
    for i in range(3):
        send_smtp(a if i % 2 else b, address(mbx), build_message(subject=f"tok-u{i}"))
    first = imap_uids(a, mbx)
    assert first == [1, 2, 3]
    assert imap_uids(b, mbx) == first
    m = imap_login(b, mbx)
    m.select("INBOX")
    m.uid("STORE", "3", "+FLAGS", r"(\Deleted \Seen)")
    m.expunge()
    m.logout()
    send_smtp(a, address(mbx), build_message(subject="tok-u3"))
    assert imap_uids(a, mbx) == [1, 2, 4]
    # Flags set through one node are seen through the other.
    m = imap_login(a, mbx)
    m.select("INBOX")
    m.uid("STORE", "1", "+FLAGS", r"(\Seen)")
    m.logout()
    m = imap_login(b, mbx)
    m.select("INBOX")
    typ, data = m.uid("FETCH", "1", "(FLAGS)")
    m.logout()
    assert b"\\Seen" in data[0]


def test_console_and_metrics_of_each_node_show_the_cluster(console_gw, garage):
    a = console_gw(garage.storage_config("node-a"))
    b = console_gw(garage.storage_config("node-b"))
    mbx = a.create_mailbox(name="via console")
    for i in range(3):
        send_smtp(b.gw, address(mbx), build_message(subject=f"tok-c{i}", body=b"x" * 1000))

    def both_see_it():
        st = b.api_ok("GET", "status")
        c = st.get("cluster") or {}
        peers = {n["node"] for n in c.get("nodes", [])}
        counted = [m for m in st["mailboxes"] if m["id"] == mbx["id"] and m["messages"] == 3]
        return c.get("store_up") and {"node-a", "node-b"} <= peers and counted

    wait_until(both_see_it, timeout=30, what="node b's status to show both nodes and the mail")
    for con in (a, b):
        m = con.metrics()
        assert m.get("journalgate_cluster_store_up") == 1
        assert m.get("journalgate_cluster_node_last_seen_timestamp_seconds", node="node-a") > 0
        assert m.get("journalgate_cluster_node_last_seen_timestamp_seconds", node="node-b") > 0
    wait_until(lambda: a.metrics().mailbox("journalgate_mailbox_messages", mbx) == 3,
               timeout=30, what="node a's metrics to count the mail node b took")
    _, page = a.login().page("/")
    card = page.select("#cluster")
    assert card, page
    assert "node-a" in card[0].text() and "answering" in card[0].text()
    assert {r.select("td")[0].text() for r in card[0].select("tr.peer")} >= {"node-a", "node-b"}


def test_archive_copies_go_through_the_store_to_the_node_that_files_the_archive(archive_gw, garage):
    bucket = garage.new_bucket("archive-test")
    # Every node seals archive copies to the same intake key (the filing node opens them):
    # storage_config gives each node the cluster's.
    a = archive_gw(overrides=garage.storage_config("arch-a", bucket=bucket))
    alice = add_user(a, "alice@contoso.example")
    wait_until(lambda: "files the cluster's archive intake" in a.log_text(), timeout=30,
               what="node a to take the archive worker claim")
    # A node with another intake key is refused at start.
    odd = archive_gw(overrides=garage.storage_config("arch-odd", bucket=bucket), start=False,
                     archive={"intake_key_file": str(garage.base / "another-intake.key")})
    with pytest.raises(AssertionError, match="intake key"):
        odd.start()
    b = archive_gw(overrides=garage.storage_config("arch-b", bucket=bucket))
    report = journal_report(original=make_original(subject="tok-archived-via-b"))
    send_smtp(b, [a.jmbx["address"]], report, sender="journal@contoso.example")
    b.kill9()  # right after the 250: the archive's copy is in the store, not only on b

    def alice_has_it():
        c = imap_user(a, alice["login"], alice["password"])
        try:
            # alice sent the original: her Sent folder
            return any(b"tok-archived-via-b" in m for m in folder_messages(c, "Sent").values())
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    wait_until(alice_has_it, timeout=60, what="alice's archive on node a to hold the report")
    assert "files the cluster's archive intake" not in b.log_text()


def test_imap_idle_on_one_node_sees_mail_that_came_through_the_other(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox()
    send_smtp(a, address(mbx), build_message(subject="tok-first"))
    m = imap_login(a, mbx)
    try:
        m.select("INBOX")
        tag = m._new_tag().decode()
        m.send(f"{tag} IDLE\r\n".encode())
        assert m.readline().startswith(b"+")
        send_smtp(b, address(mbx), build_message(subject="tok-second"))
        deadline = time.monotonic() + 20
        seen = b""
        m.sock.settimeout(20)
        while b"2 EXISTS" not in seen and time.monotonic() < deadline:
            seen += m.readline()
        assert b"* 2 EXISTS" in seen, seen
        m.send(b"DONE\r\n")
        while not m.readline().startswith(tag.encode()):
            pass
    finally:
        with contextlib.suppress(Exception):
            m.logout()


def test_a_deleted_mailbox_stays_deleted_on_every_node(node):
    a, b = node("node-a"), node("node-b")
    mbx = a.create_mailbox()
    send_smtp(b, address(mbx), build_message(subject="tok-doomed"))  # b knows it now
    other = a.create_mailbox()
    send_smtp(b, address(other), build_message(subject="tok-other"))
    b.stop()  # down while the mailbox is deleted on a
    a.cli("mailbox", "suspend", mbx["id"])
    a.cli("mailbox", "delete", mbx["id"])
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_smtp(a, address(mbx), build_message(subject="tok-late"))
    b.start()

    def gone_from_b():
        ids = [m["id"] for m in b.cli("mailbox", "list")["mailboxes"]]
        return mbx["id"] not in ids and other["id"] in ids

    wait_until(gone_from_b, timeout=20, what="node b to drop the deleted mailbox")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_smtp(b, address(mbx), build_message(subject="tok-late"))
    time.sleep(3)  # a few syncs: b must not have pushed it back
    assert mbx["id"] not in [m["id"] for m in a.cli("mailbox", "list")["mailboxes"]]
    assert [token_of(m) for _, m in pop3_fetch_all(b, other)] == ["tok-other"]
