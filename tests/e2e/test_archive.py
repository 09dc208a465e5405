"""The per-user journal archive (issue 4) end to end: journal reports in over SMTP, unpacked in
the background, read back over IMAP (Python imaplib and a raw client) byte for byte.

Every test states exactly which folders of which users hold which originals; every other
folder must be empty (`check_archive`). Fixtures are written by archiveharness's builders;
the shared corpus files are replayed as they are (real/ ones converted to CRLF)."""

from __future__ import annotations

import base64
import email.header
import imaplib
import os
import re
import time

import pytest

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    ENVELOPES, JOURNAL_NDR, MARKERS, UNKNOWN, Whole, add_user, add_users, archive_gw,
    archive_stats, assert_alive, check_archive, describe, expect_report, expected_original,
    folder_counts, folder_messages, imap_user, journal_report, list_folders, logout, make_igw,
    make_original, ndr_wrap, originals_of, plain_message, raw_user, report_fields,
    selectable, send_bdat, send_report, user_snapshot, wait_archived,
)
from imapharness import imaplib_connect, quote, uid_map
from jgharness import CORPUS, crlf, pop3_fetch_all, strip_received

AUD = "auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
DAVE = "dave@contoso.example"
ERIN = "erin@contoso.example"

CORPUS_FILES = sorted(CORPUS.glob("real/*.eml")) + sorted(CORPUS.glob("constructed/*.eml"))
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not at {CORPUS}")

EXTENDED = "constructed-exo-outbound-extended-fields.eml"
NDR_WRAPPED = "constructed-exo-journal-ndr-wrapped.eml"
DECRYPTED = "constructed-exo-journal-decrypted-copy.eml"

# (Sent, INBOX) per corpus file, as written in the files' report parts. The test derives the
# same from the files (report_fields) and checks both agree.
CORPUS_ROLES = {
    "ace-extra_message_id.eml": ({"jrobinson@company.com"}, {"ashphish@integraldefense.com"}),
    "ace-o365_journaled.eml": ({"ap@someothercompany.com"}, {"lulu.zingzing@company.com"}),
    "ace-pdf_attachment.eml": ({"unixfreak0037@gmail.com"}, {"jwdavison@company.com"}),
    "ace-phish_me.eml": ({"cware@company.com"}, {"valvphish@integraldefense.com"}),
    "ace-splunk_logging.eml": ({"unixfreak0037@gmail.com"}, {"jwdavison@company.com"}),
    EXTENDED: (
        # alice sent it on behalf of the CEO
        {"alice@contoso.example", "ceo@contoso.example"},
        # bob + carol via the DL (Expanded), Paula (external To), dave (Cc) and
        # dave.assistant (Cc, forwarded for dave), erin (Bcc)
        {"bob@contoso.example", "carol.smith@contoso.example", "paula.partner@fabrikam.example",
         "dave@contoso.example", "dave.assistant@contoso.example", "erin@fabrikam.example"}),
    DECRYPTED: ({"alice@contoso.example"}, {"bob@contoso.example"}),
}
CORPUS_ROLES[NDR_WRAPPED] = CORPUS_ROLES[EXTENDED]
# The distribution list a recipient was expanded from is not itself a participant.
NOT_PARTICIPANTS = {EXTENDED: ["sales@contoso.example"], NDR_WRAPPED: ["sales@contoso.example"]}


def roles(fields) -> tuple[set, set]:
    sent = {a.lower() for a in (fields["sender"], fields["on_behalf_of"]) if a}
    inbox = set()
    for r in fields["recipients"]:
        inbox.add(r["address"].lower())
        if r.get("forwarded"):
            inbox.add(r["forwarded"].lower())
    return sent, inbox


def gateway_mailbox_has(gw, raws):
    """The gateway mailbox still receives every report untouched (unchanged behaviour)."""
    got = [strip_received(m) for _, m in pop3_fetch_all(gw, gw.jmbx)]
    assert sorted(got) == sorted(raws), \
        f"gateway mailbox holds {[describe(g) for g in got]}, expected {[describe(r) for r in raws]}"


# =========================================================================== corpus


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_report_archived(archive_gw, path):
    raw = crlf(path.read_bytes())
    fields = report_fields(raw)
    sent, inbox = roles(fields)
    assert (sent, inbox) == CORPUS_ROLES[path.name], "report fields read from the file changed"
    gw = archive_gw()
    extra = NOT_PARTICIPANTS.get(path.name, [])
    users = add_users(gw, *sorted(sent | inbox), *extra, auditor=AUD)
    ndr = path.name == NDR_WRAPPED
    if ndr:
        # an NDR-wrapped report is trusted only for a mailbox pinned to its tenant (issue 10)
        gw.cli("mailbox", "tenant", gw.jmbx["id"], "contoso.example")
    send_report(gw, raw, sender="" if ndr else JOURNAL_NDR)

    item = expected_original(raw)
    if path.name == DECRYPTED:
        origs = originals_of(raw)
        assert len(origs) == 2 and item == origs[1] and b"Clear-text body" in item
    expected = expect_report({}, users, fields, item)
    assert {lg for lg, v in expected.items() if v.get("Sent")} == sent
    assert {lg for lg, v in expected.items() if v.get("INBOX")} == inbox
    stats = dict(unknown=0, untrusted_reports=0, users=folder_counts(expected))
    if path.name != DECRYPTED:
        stats["items"] = 1
    wait_archived(gw, **stats)
    seen = check_archive(gw, expected, unknown=[])
    if path.name == DECRYPTED:
        # the IRM-protected original is not shown, only the clear-text copy
        for folders in seen.values():
            for msgs in folders.values():
                assert all(b"message.rpmsg" not in m for m in msgs)
    gateway_mailbox_has(gw, [raw])


@needs_corpus
def test_ndr_wrapped_and_direct_report_of_one_message_merge(archive_gw):
    """The same report arriving directly and, later, recovered from an NDR ("Send Again"):
    one archive item, every participant sees it once."""
    direct = crlf((CORPUS / "constructed" / EXTENDED).read_bytes())
    wrapped = crlf((CORPUS / "constructed" / NDR_WRAPPED).read_bytes())
    assert expected_original(direct) == expected_original(wrapped)
    gw = archive_gw()
    gw.cli("mailbox", "tenant", gw.jmbx["id"], "contoso.example")
    sent, inbox = CORPUS_ROLES[EXTENDED]
    users = add_users(gw, *sorted(sent | inbox), auditor=AUD)
    send_report(gw, direct)
    send_report(gw, wrapped, sender="")
    item = expected_original(direct)
    expected = expect_report({}, users, report_fields(direct), item)
    wait_archived(gw, items=1, duplicates_merged=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


# =========================================================================== users, access


def test_user_cli(archive_gw):
    gw = archive_gw()
    u = add_user(gw, "Dora.Explorer@Contoso.Example", aliases=["D.Explorer@CONTOSO.example"],
                 name="Dora Explorer")
    assert u["login"] == "dora.explorer@contoso.example"
    a = add_user(gw, AUD, auditor=True)
    listing = gw.cli("user", "list")["users"]
    by_login = {x["login"]: x for x in listing}
    assert set(by_login) == {"dora.explorer@contoso.example", AUD}, listing
    dora = by_login["dora.explorer@contoso.example"]
    assert dora["id"] == u["id"] and dora["aliases"] == ["d.explorer@contoso.example"], dora
    assert dora["name"] == "Dora Explorer" and dora["auditor"] is False and dora["created"], dora
    assert by_login[AUD]["auditor"] is True and by_login[AUD]["id"] == a["id"]
    assert "password" not in dora, "user list must not print passwords"
    show = gw.cli("user", "show", "dora.explorer@contoso.example")
    assert show["id"] == u["id"] and show["login"] == u["login"], show
    # every address belongs to one user only; addresses are validated
    for args in (["user", "add", "d.explorer@contoso.example"],
                 ["user", "add", "DORA.EXPLORER@contoso.example"],
                 ["user", "add", "x@contoso.example", "--alias", "Dora.Explorer@contoso.example"],
                 ["user", "add", "not-an-address"],
                 ["user", "add", "evil/../x@contoso.example"]):
        rc, out, err = gw.cli_raw(*args)
        assert rc != 0, f"{args} succeeded: {out}"
    assert len(gw.cli("user", "list")["users"]) == 2
    # the user can log in (STARTTLS and implicit TLS); after delete, no more
    for mode in ("starttls", "ssl"):
        c = imap_user(gw, u["login"], u["password"], mode=mode)
        assert selectable(list_folders(c)) == {"INBOX", "Sent"}
        logout(c)
    gw.cli("user", "delete", u["login"])
    assert [x["login"] for x in gw.cli("user", "list")["users"]] == [AUD]
    rc, out, err = gw.cli_raw("user", "show", u["login"])
    assert rc != 0, out
    c = imaplib_connect(gw, "starttls")
    try:
        with pytest.raises(imaplib.IMAP4.error):
            c.login(u["login"], u["password"])
    finally:
        logout(c)


def test_auditor_and_user_access(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    o1 = make_original(subject="alice to bob", sender=ALICE, to=BOB)
    o2 = make_original(subject="bob to carol", sender=BOB, to=CAROL)
    o3 = make_original(subject="strangers", sender="x@fabrikam.example", to="y@fabrikam.example")
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=o1))
    send_report(gw, journal_report(BOB, [("To", CAROL)], original=o2))
    send_report(gw, journal_report("x@fabrikam.example", ["y@fabrikam.example"], original=o3))
    expected = {ALICE: {"Sent": [o1]}, BOB: {"INBOX": [o1], "Sent": [o2]},
                CAROL: {"INBOX": [o2]}}
    wait_archived(gw, items=3, unknown=1, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[o3])

    # a user sees nothing of anyone else, under any name or command
    bob = users[BOB]
    c = raw_user(gw, BOB, bob["password"])
    try:
        for f in (f"Users/{ALICE}/Sent", f"Users/{CAROL}/INBOX", UNKNOWN, "Users",
                  f"Users/{ALICE}"):
            for cmd in (f"SELECT {quote(f)}", f"EXAMINE {quote(f)}",
                        f"STATUS {quote(f)} (MESSAGES)"):
                r = c.cmd(cmd)
                assert r.status == "NO", f"bob: {cmd} -> {r}"
                assert not r.exists(), r
        for pattern in ("*", "%", "Users/*", "*Unknown*"):
            r = c.cmd(f'LIST "" {quote(pattern)}')
            assert r.ok, r
            text = b"\n".join(r.lines("LIST"))
            assert b"alice" not in text and b"carol" not in text and b"Unknown" not in text, text
        r = c.select("INBOX")
        # read-write: per-user flags are kept (never \Deleted)
        assert r.exists() == [1] and r.code == "READ-WRITE", r
        c.cmd("LOGOUT")
    finally:
        c.close()

    # the auditor opens another user's folder and the catch-all (read-write for the
    # auditor's own flags; nothing can be deleted)
    c = raw_user(gw, AUD, users[AUD]["password"], mode="tls")
    try:
        for f, n in ((f"Users/{BOB}/Sent", 1), (f"Users/{CAROL}/INBOX", 1), (UNKNOWN, 1),
                     (f"Users/{ALICE}/INBOX", 0)):
            r = c.cmd(f"SELECT {quote(f)}")
            assert r.ok and r.code == "READ-WRITE" and r.exists() == [n], (f, r)
        c.cmd("LOGOUT")
    finally:
        c.close()

    # no login before TLS, wrong passwords refused, another user's password refused
    c = imaplib_connect(gw, "plain")
    try:
        with pytest.raises(imaplib.IMAP4.error):
            c.login(BOB, bob["password"])
    finally:
        logout(c)
    for login, pw in ((BOB, "wrong-password"), (BOB, users[ALICE]["password"]),
                      ("nobody@contoso.example", bob["password"])):
        c = imaplib_connect(gw, "starttls")
        try:
            with pytest.raises(imaplib.IMAP4.error):
                c.login(login, pw)
        finally:
            logout(c)


def test_aliases_and_case_insensitive_matching(archive_gw):
    gw = archive_gw()
    add_user(gw, ALICE, aliases=["A.Smith@contoso.example"])
    add_user(gw, BOB, aliases=["robert@contoso.example", "BOB@Legacy.Example"])
    add_user(gw, AUD, auditor=True)
    o1 = make_original(subject="alias sender, alias recipient")
    o2 = make_original(subject="legacy alias sends to upper-case login", sender="bob@legacy.example")
    o3 = make_original(subject="bob twice: login and alias")
    o4 = make_original(subject="bob to himself via alias", sender="robert@contoso.example")
    send_report(gw, journal_report("A.Smith@Contoso.EXAMPLE", [("Recipient", "ROBERT@contoso.example")],
                                   original=o1))
    send_report(gw, journal_report("Bob@Legacy.Example", [("To", "alice@CONTOSO.example")],
                                   original=o2))
    send_report(gw, journal_report(ALICE, [("To", "Bob@Contoso.Example"),
                                           ("Cc", "Robert@Contoso.Example")], original=o3))
    send_report(gw, journal_report("robert@contoso.example", [("Recipient", "BOB@CONTOSO.EXAMPLE")],
                                   original=o4))
    expected = {ALICE: {"Sent": [o1, o3], "INBOX": [o2]},
                BOB: {"INBOX": [o1, o3, o4], "Sent": [o2, o4]}}
    wait_archived(gw, items=4, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_assignment_uses_report_fields_not_headers(archive_gw):
    """The wrapper's and the original's To:/Cc: (zoe) do not assign anything; only the
    report's lines do. A Subject: value that looks like a recipient line is just a subject."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, "zoe@contoso.example", "mallory@contoso.example", auditor=AUD)
    orig = make_original(subject="Re: To: mallory@contoso.example see below", sender=ALICE,
                         to="bob@contoso.example, zoe@contoso.example",
                         cc="mallory@contoso.example")
    rep = journal_report(ALICE, [("To", BOB)], original=orig,
                         wrapper_headers=["Reply-To: zoe@contoso.example"])
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


@pytest.mark.parametrize("marker", list(MARKERS))
def test_journal_report_markers(archive_gw, marker):
    """X-MS-Journal-Report (any case), X-MS-Exchange-Organization-Journal-Report and the
    Exchange 2003 Content-Identif(i)er: ExJournalReport with a folded Recipients: list."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, CAROL, DAVE, auditor=AUD)
    orig = make_original(subject=f"marker {marker}")
    if marker.startswith("2003"):
        rcpts = [BOB, "<EX:/O=CONTOSO/OU=FIRST ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=ZED>",
                 CAROL, "outsider@fabrikam.example", DAVE]
    else:
        rcpts = [("To", BOB), ("Cc", CAROL), ("Bcc", DAVE)]
    rep = journal_report(ALICE, rcpts, original=orig, marker=marker)
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}, CAROL: {"INBOX": [orig]},
                DAVE: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


# =========================================================================== unknown addresses


def test_unknown_addresses_catch_all(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="outsiders only", sender="out@fabrikam.example",
                       to="partner@fabrikam.example")
    o2 = make_original(subject="unresolvable addresses only", sender="x@fabrikam.example")
    o3 = make_original(subject="known users")
    send_report(gw, journal_report("out@fabrikam.example", ["partner@fabrikam.example"],
                                   original=o1))
    send_report(gw, journal_report(
        "Unspecified Address",
        ["/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=x"],
        original=o2))
    send_report(gw, journal_report(ALICE, [BOB], original=o3))
    expected = {ALICE: {"Sent": [o3]}, BOB: {"INBOX": [o3]}}
    wait_archived(gw, items=3, unknown=2, skipped_unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[o1, o2])


def test_unknown_addresses_skip(archive_gw):
    gw = archive_gw(unknown_addresses="skip")
    add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="nobody known", sender="out@fabrikam.example",
                       to="partner@fabrikam.example")
    o2 = make_original(subject="known users")
    r1 = send_report(gw, journal_report("out@fabrikam.example", ["partner@fabrikam.example"],
                                        original=o1))
    r2 = send_report(gw, journal_report(ALICE, [BOB], original=o2))
    expected = {ALICE: {"Sent": [o2]}, BOB: {"INBOX": [o2]}}
    wait_archived(gw, items=1, unknown=0, skipped_unknown=1, users=folder_counts(expected))
    check_archive(gw, expected, unknown=None)
    # skipping concerns the archive only: the gateway mailbox keeps both reports
    gateway_mailbox_has(gw, [r1, r2])


# =========================================================================== trust


@pytest.mark.parametrize("sources", ["other-network", "default"])
def test_forged_report_from_untrusted_source(archive_gw, sources):
    """A journal report from outside journal_sources is a plain copy of the whole message,
    routed by its envelope (the gateway mailbox: nobody), never by its Recipient: lines."""
    if sources == "default":
        gw = archive_gw(journal_sources="omit")  # the built-in default: nothing trusted
    else:
        gw = archive_gw(trusted=False)
    add_users(gw, ALICE, BOB, "ceo@contoso.example", auditor=AUD)
    orig = make_original(subject="Please wire 50,000 EUR today", sender="ceo@contoso.example",
                         to=BOB)
    forged = journal_report("ceo@contoso.example", [("To", BOB), ("To", ALICE), ("Bcc", AUD)],
                            original=orig)
    send_report(gw, forged, sender="journal.ndr@evil.example")
    wait_archived(gw, items=1, unknown=1, untrusted_reports=1,
                  users={BOB: {"inbox": 0, "sent": 0}, ALICE: {"inbox": 0},
                         "ceo@contoso.example": {"sent": 0}, AUD: {"inbox": 0}})
    check_archive(gw, {}, unknown=[Whole(forged)])
    gateway_mailbox_has(gw, [forged])


def test_trusted_report_with_stray_lines_is_quarantined(archive_gw):
    """A report from a trusted network whose report part has extra text (issue 10: it was
    trusted anyway) goes to Unknown Addresses, counted, never to the named users."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    orig = make_original(subject="invoice", sender=ALICE, to=BOB)
    forged = journal_report(ALICE, [("To", BOB)], original=orig,
                            extra_report_lines=["Please also file this for everyone"])
    send_report(gw, forged)
    wait_archived(gw, items=1, unknown=1, quarantined_reports=1,
                  users={BOB: {"inbox": 0}, ALICE: {"sent": 0}})
    check_archive(gw, {}, unknown=[Whole(forged)])


@needs_corpus
def test_ndr_wrapped_report_needs_a_tenant_pin(archive_gw):
    """An NDR carries whatever the bounced message contained: without a tenant pin on the
    mailbox, its inner report is quarantined, not filed for the users it names."""
    wrapped = crlf((CORPUS / "constructed" / NDR_WRAPPED).read_bytes())
    gw = archive_gw()
    sent, inbox = CORPUS_ROLES[NDR_WRAPPED]
    add_users(gw, *sorted(sent | inbox), auditor=AUD)
    send_report(gw, wrapped, sender="")
    wait_archived(gw, items=1, unknown=1, quarantined_reports=1, ndr_unwrapped=0)
    check_archive(gw, {}, unknown=[Whole(wrapped)])


def test_tenant_pin_quarantines_reports_of_other_tenants(archive_gw):
    """Microsoft 365's outbound ranges are shared by every tenant: a pinned mailbox files
    only reports that name its tenant (X-OriginatorOrg / X-MS-Exchange-CrossTenant-Id)."""
    gw = archive_gw()
    gw.cli("mailbox", "tenant", gw.jmbx["id"], "Contoso.example")
    assert gw.cli("mailbox", "show", gw.jmbx["id"])["tenant"] == "contoso.example"
    add_users(gw, ALICE, BOB, auditor=AUD)
    ours = journal_report(ALICE, [("To", BOB)],
                          original=make_original(subject="ours", sender=ALICE, to=BOB),
                          wrapper_headers=["X-OriginatorOrg: contoso.example"])
    theirs = journal_report(ALICE, [("To", BOB)],
                            original=make_original(subject="theirs", sender=ALICE, to=BOB),
                            wrapper_headers=["X-OriginatorOrg: fabrikam.example"])
    send_report(gw, ours)
    send_report(gw, theirs)
    wait_archived(gw, items=2, unknown=1, quarantined_reports=1,
                  users={BOB: {"inbox": 1}, ALICE: {"sent": 1}})


def test_plain_copy_with_trusted_envelope_header(archive_gw):
    gw = archive_gw(envelope_headers=[{"network": "127.0.0.0/8", "header": "X-Envelope-To"}])
    add_users(gw, BOB, CAROL, DAVE, auditor=AUD)
    m1 = plain_message(subject="bcc copy for bob", to=CAROL,
                       extra_headers=[f"X-Envelope-To: {BOB}"])
    m2 = plain_message(subject="bcc copy for dave and bob", to=CAROL,
                       extra_headers=["X-Envelope-To: DAVE@contoso.example",
                                      f"X-Envelope-To: {BOB}"])
    send_report(gw, m1, sender="partner@fabrikam.example")
    send_report(gw, m2, sender="partner@fabrikam.example")
    # carol is only in the To: header, which is not the envelope: she gets nothing
    expected = {BOB: {"INBOX": [Whole(m1), Whole(m2)]}, DAVE: {"INBOX": [Whole(m2)]}}
    wait_archived(gw, items=2, unknown=0, untrusted_reports=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    gateway_mailbox_has(gw, [m1, m2])


def test_plain_copy_envelope_header_from_untrusted_network(archive_gw):
    gw = archive_gw(envelope_headers=[{"network": "192.0.2.0/24", "header": "X-Envelope-To"}])
    add_users(gw, BOB, CAROL, auditor=AUD)
    m1 = plain_message(subject="forged envelope header", to=CAROL,
                       extra_headers=[f"X-Envelope-To: {BOB}"])
    send_report(gw, m1, sender="partner@fabrikam.example")
    wait_archived(gw, items=1, unknown=1, users={BOB: {"inbox": 0}, CAROL: {"inbox": 0}})
    check_archive(gw, {}, unknown=[Whole(m1)])


def test_ndr_without_journal_report_is_a_plain_copy(archive_gw):
    """An NDR at the journal address that carries an ordinary message (not a report) is not
    unwrapped: it is a plain copy (no envelope header configured -> Unknown Addresses)."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    inner = make_original(subject="an ordinary bounced message", sender=ALICE, to=BOB)
    ndr = ndr_wrap(inner)
    send_report(gw, ndr, sender="")
    wait_archived(gw, items=1, unknown=1, users={ALICE: {"sent": 0}, BOB: {"inbox": 0}})
    check_archive(gw, {}, unknown=[Whole(ndr)])


# =========================================================================== duplicates


def test_same_report_twice_is_stored_once(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    orig = make_original(subject="sent twice")
    rep = journal_report(ALICE, [("To", BOB), ("Cc", CAROL)], original=orig)
    send_report(gw, rep)
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}, CAROL: {"INBOX": [orig]}}
    wait_archived(gw, items=1, duplicates_merged=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    gateway_mailbox_has(gw, [rep, rep])


def test_bifurcated_reports_merge_recipients(archive_gw):
    """Two reports of one message (DL expansion split; different hubs): same Message-ID,
    the originals differ only in Received, X-MS-Exchange-Organization-* and
    X-MS-Exchange-Forest-* fields. Stored once; each recipient sees it once."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, CAROL, DAVE, ERIN, auditor=AUD)
    mid = f"<bifurcated-{os.urandom(6).hex()}@contoso.example>"
    common = dict(subject="All-hands agenda", sender=ALICE, to="all-staff@contoso.example",
                  msgid=mid, body="Agenda:\r\n1. Numbers\r\n2. Questions\r\n")
    v1 = make_original(**common, received=("from hub1.contoso.example by hub2; Tue, 12 Mar "
                                           "2024 09:30:01 +0000",),
                       org_headers=(("X-MS-Exchange-Organization-Network-Message-Id", "aaaa-1"),
                                    ("X-MS-Exchange-Organization-AuthAs", "Internal")))
    v2 = make_original(**common, received=("from hub3.contoso.example by hub4; Tue, 12 Mar "
                                           "2024 09:30:02 +0000",
                                           "from hub1.contoso.example by hub3; Tue, 12 Mar "
                                           "2024 09:30:01 +0000"),
                       org_headers=(("X-MS-Exchange-Organization-Network-Message-Id", "bbbb-2"),
                                    ("X-MS-Exchange-Organization-AuthAs", "Internal"),
                                    ("X-MS-Exchange-Forest-ArrivalHubServer", "hub3"),
                                    ("X-MS-Exchange-Organization-SCL", "-1")))
    assert v1 != v2
    dl = "all-staff@contoso.example"
    send_report(gw, journal_report(ALICE, [("To", BOB, "Expanded", dl), ("To", CAROL, "Expanded", dl)],
                                   original=v1))
    send_report(gw, journal_report(ALICE, [("To", DAVE, "Expanded", dl), ("To", ERIN, "Expanded", dl)],
                                   original=v2))
    counts = {lg: {"inbox": 1} for lg in (BOB, CAROL, DAVE, ERIN)}
    counts[ALICE] = {"sent": 1, "inbox": 0}
    wait_archived(gw, items=1, duplicates_merged=1, unknown=0, users=counts)
    # whichever copy was kept, everybody sees that same one
    c = imap_user(gw, BOB, gw.archive_users[BOB]["password"])
    try:
        kept = list(folder_messages(c, "INBOX").values())
    finally:
        logout(c)
    assert len(kept) == 1 and kept[0] in (v1, v2), [describe(k) for k in kept]
    k = kept[0]
    expected = {ALICE: {"Sent": [k]}, BOB: {"INBOX": [k]}, CAROL: {"INBOX": [k]},
                DAVE: {"INBOX": [k]}, ERIN: {"INBOX": [k]}}
    check_archive(gw, expected, unknown=[])


def test_same_message_id_different_content_is_not_merged(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    mid = f"<reused-{os.urandom(6).hex()}@contoso.example>"
    o1 = make_original(subject="first message", msgid=mid, body="one\r\n")
    o2 = make_original(subject="first message", msgid=mid, body="a different body\r\n")
    send_report(gw, journal_report(ALICE, [BOB], original=o1))
    send_report(gw, journal_report(ALICE, [BOB], original=o2))
    expected = {ALICE: {"Sent": [o1, o2]}, BOB: {"INBOX": [o1, o2]}}
    wait_archived(gw, items=2, duplicates_merged=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_unknown_message_id_is_not_a_dedup_key(archive_gw):
    """Two different originals without Message-ID: both reports say `Unknown Message-ID`."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="no id one", msgid="", body="first\r\n")
    o2 = make_original(subject="no id two", msgid="", body="second\r\n")
    assert b"Message-ID" not in o1
    r1 = journal_report(ALICE, [BOB], original=o1)
    assert b"Message-Id: Unknown Message-ID\r\n" in r1
    send_report(gw, r1)
    send_report(gw, journal_report(ALICE, [BOB], original=o2))
    expected = {ALICE: {"Sent": [o1, o2]}, BOB: {"INBOX": [o1, o2]}}
    wait_archived(gw, items=2, duplicates_merged=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


# =========================================================================== IMAP behaviour


def test_archive_folders_are_read_only(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    orig = make_original(subject="try to delete me")
    send_report(gw, journal_report(ALICE, [BOB], original=orig))
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, users=folder_counts(expected))
    upload = make_original(subject="appended by a client")
    for login, folder, other in ((BOB, "INBOX", "Sent"), (AUD, f"Users/{BOB}/INBOX", "INBOX"),
                                 (AUD, UNKNOWN, "INBOX")):
        c = raw_user(gw, login, users[login]["password"])
        try:
            r = c.cmd(f"EXAMINE {quote(folder)}")
            assert r.ok and r.code == "READ-ONLY", r
            r = c.cmd(f"SELECT {quote(folder)}")
            # read-write for per-user flags; nothing can be deleted, copied or moved
            assert r.ok and r.code == "READ-WRITE", f"SELECT {folder}: {r}"
            perm = r.code_value("PERMANENTFLAGS")
            assert perm and b"\\Deleted" not in perm[0] and b"\\Seen" in perm[0], r
            n = r.exists()[-1]
            if n:
                uid = uid_map(c)[0]
                cmds = ["STORE 1 +FLAGS (\\Deleted)", f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)",
                        "STORE 1 FLAGS (\\Deleted \\Seen)", "EXPUNGE", f"UID EXPUNGE {uid}",
                        f"COPY 1 {other}", f"UID COPY {uid} {other}", f"MOVE 1 {other}",
                        f"UID MOVE {uid} {other}"]
            else:
                cmds = ["EXPUNGE"]
            cmds += ["CREATE Trash", f"CREATE {quote(folder + '/sub')}", f"DELETE {quote(folder)}",
                     f"RENAME {quote(folder)} Renamed", "DELETE Sent", "RENAME Sent Gesendet"]
            for cmd in cmds:
                r = c.cmd(cmd)
                assert r.status == "NO", f"{login} in {folder}: {cmd} -> {r}"
                assert not r.expunged(), f"{cmd}: {r}"
            for target in (folder, other):
                r = c.cmd_lit(f"APPEND {quote(target)} ", upload)
                assert r.status == "NO", f"{login}: APPEND {target} -> {r}"
            r = c.cmd("CLOSE")
            assert r.ok and not r.expunged(), r
            c.cmd("LOGOUT")
        finally:
            c.close()
    # nothing changed, nothing is flagged \Deleted
    check_archive(gw, expected, unknown=[])
    c = raw_user(gw, BOB, users[BOB]["password"])
    try:
        c.cmd("EXAMINE INBOX")
        r = c.cmd("FETCH 1:* (FLAGS)")
        assert r.ok and all("\\Deleted" not in str(d["FLAGS"]) for _, d in r.fetches()), r
        c.cmd("LOGOUT")
    finally:
        c.close()
    st = archive_stats(gw)
    assert st["items"] == 1, st


def test_search_internaldate_and_size(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, CAROL)
    tag = os.urandom(4).hex()
    o1 = make_original(subject=f"Budget alpha-{tag}", sender=ALICE, to=BOB,
                       body="nothing to see\r\n")
    o2 = make_original(subject="Lunch plans", sender=CAROL, to=BOB,
                       body=f"Meet at the zebra-{tag} crossing.\r\n")
    o3 = make_original(subject="Offsite", sender=ALICE, to=BOB,
                       extra_headers=[f"X-Project: kiwi-{tag}"])
    t0 = time.time()
    send_report(gw, journal_report(ALICE, [BOB], original=o1))
    send_report(gw, journal_report(CAROL, [BOB], original=o2))
    send_report(gw, journal_report(ALICE, [BOB], original=o3))
    t1 = time.time()
    wait_archived(gw, items=3, users={BOB: {"inbox": 3}, ALICE: {"sent": 2}, CAROL: {"sent": 1}})
    c = imap_user(gw, BOB, users[BOB]["password"])
    try:
        msgs = folder_messages(c, "INBOX")
        uid_of = {}
        for uid, m in msgs.items():
            for name, o in (("o1", o1), ("o2", o2), ("o3", o3)):
                if m == o:
                    uid_of[name] = uid
        assert len(uid_of) == 3, [describe(m) for m in msgs.values()]

        def search(*crit):
            typ, data = c.uid("SEARCH", *crit)
            assert typ == "OK", (crit, data)
            return sorted(int(x) for x in data[0].split())

        assert search("SUBJECT", f'"alpha-{tag}"') == [uid_of["o1"]]
        assert search("SUBJECT", '"lunch"') == [uid_of["o2"]]
        assert search("FROM", quote(CAROL)) == [uid_of["o2"]]
        assert search("FROM", quote(ALICE)) == sorted([uid_of["o1"], uid_of["o3"]])
        assert search("TEXT", f'"zebra-{tag}"') == [uid_of["o2"]]
        assert search("BODY", f'"zebra-{tag}"') == [uid_of["o2"]]
        assert search("HEADER", "X-Project", f'"kiwi-{tag}"') == [uid_of["o3"]]
        assert search("ALL") == sorted(uid_of.values())
        # only the original is searched, not the journal wrapper or report part
        assert search("TEXT", '"journal.report.generator"') == []
        assert search("TEXT", '"X-MS-Journal-Report"') == []
        assert search("BODY", '"Recipient:"') == []
        # INTERNALDATE is the arrival of the report, not the original's Date (2024)
        typ, data = c.uid("FETCH", "1:*", "(UID INTERNALDATE RFC822.SIZE)")
        assert typ == "OK", data
        for line in data:
            it = imaplib.Internaldate2tuple(line)
            assert it is not None, f"no INTERNALDATE in {line!r}"
            arrived = time.mktime(it)
            assert t0 - 2 <= arrived <= t1 + 2, (line, t0, t1)
            uid = int(re.search(rb"UID (\d+)", line).group(1))
            size = int(re.search(rb"RFC822.SIZE (\d+)", line).group(1))
            assert size == len(msgs[uid]), line
    finally:
        logout(c)
    c = imap_user(gw, ALICE, users[ALICE]["password"])
    try:
        c.select("Sent", readonly=True)
        typ, data = c.uid("SEARCH", "SUBJECT", f'"alpha-{tag}"')
        assert typ == "OK" and len(data[0].split()) == 1, data
        typ, data = c.uid("SEARCH", "TEXT", f'"zebra-{tag}"')
        assert typ == "OK" and data[0].split() == [], data
    finally:
        logout(c)


# =========================================================================== bad input


ENCODINGS = {
    # report part QP with soft breaks inside every field (Subject, Message-Id, addresses)
    "quoted-printable": dict(report_cte="quoted-printable", charset="utf-8", qp_maxline=16,
                             subject="Grüße aus München – Übersicht"),
    "base64": dict(report_cte="base64", charset="utf-8", subject="Grüße aus München"),
    "8bit-latin1": dict(report_cte="8bit", charset="iso-8859-1", subject="Grüße aus München"),
    "html": dict(html_report=True, charset="us-ascii", subject="Plain subject"),
    "html-quoted-printable": dict(html_report=True, report_cte="quoted-printable",
                                  charset="utf-8", qp_maxline=20, subject="Grüße"),
}


@pytest.mark.parametrize("enc", list(ENCODINGS))
def test_report_part_encodings(archive_gw, enc):
    """The report part is decoded (CTE, charset, HTML) before its lines are read: the
    recipients behind soft line breaks etc. get the original, and the decoded Message-Id
    makes a later plain 7bit report of the same original a duplicate."""
    kw = dict(ENCODINGS[enc])
    subject = kw.pop("subject")
    gw = archive_gw()
    add_users(gw, ALICE, "Bob.Builder@contoso.example", CAROL, DAVE, auditor=AUD)
    bob = "bob.builder@contoso.example"
    mid = f"<{'x' * 40}-{os.urandom(6).hex()}@DM6PR11MB0001.namprd11.prod.outlook.com>"
    orig = make_original(subject=email.header.Header(subject, "utf-8").encode(), msgid=mid)
    rep = journal_report(ALICE, [("To", "Bob.Builder@contoso.example"), ("Cc", CAROL)],
                         original=orig, subject=subject, **kw)
    if enc == "quoted-printable":
        assert b"=\r\n" in rep.split(b"message/rfc822")[0]
    send_report(gw, rep)
    send_report(gw, journal_report(ALICE, [("Recipient", DAVE)], original=orig, subject=subject,
                                   charset="utf-8", report_cte="8bit"))
    expected = {ALICE: {"Sent": [orig]}, bob: {"INBOX": [orig]}, CAROL: {"INBOX": [orig]},
                DAVE: {"INBOX": [orig]}}
    wait_archived(gw, items=1, duplicates_merged=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    assert_alive(gw)


def test_lf_only_report(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    orig = make_original(subject="sent with bare LF line endings")
    rep = journal_report(ALICE, [("To", BOB)], original=orig, lf_only=True)
    assert b"\r" not in rep
    lf_orig = originals_of(rep)[0]
    assert lf_orig == orig.replace(b"\r\n", b"\n")
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [lf_orig]}, BOB: {"INBOX": [lf_orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    assert_alive(gw)


def test_report_without_original(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    orig = make_original(subject="the original went missing")
    rep = journal_report(ALICE, [("To", BOB)], originals=[], subject="the original went missing",
                         msgid=f"<missing-{os.urandom(4).hex()}@contoso.example>")
    assert b"message/rfc822" not in rep and orig not in rep
    send_report(gw, rep)
    wait_archived(gw, reports_without_original=1, unknown=1, items=1,
                  users={ALICE: {"sent": 0}, BOB: {"inbox": 0}})
    check_archive(gw, {}, unknown=[Whole(rep)])
    assert_alive(gw)


def nested_original(depth=50) -> bytes:
    """A message whose body is a message whose body is ... `depth` levels; every other level
    is a multipart/mixed holding a text part and the next message."""
    inner = make_original(subject="the innermost message", received=(), org_headers=(),
                          body="deep inside\r\n")
    for level in range(depth - 1, 0, -1):
        head = (f"From: level{level}@fabrikam.example\r\nTo: {BOB}\r\nSubject: level {level}\r\n"
                f"Message-ID: <level-{level}-{os.urandom(3).hex()}@fabrikam.example>\r\n"
                "MIME-Version: 1.0\r\n")
        if level % 2:
            b = f"b{level}-{os.urandom(3).hex()}"
            inner = (head + f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
                     f"--{b}\r\nContent-Type: text/plain\r\n\r\nlevel {level}\r\n"
                     f"--{b}\r\nContent-Type: message/rfc822\r\n\r\n").encode() + inner + \
                f"\r\n--{b}--\r\n".encode()
        else:
            inner = (head + "Content-Type: message/rfc822\r\n\r\n").encode() + inner
    top = (f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: fifty levels\r\n"
           f"Message-ID: <nested-{os.urandom(4).hex()}@contoso.example>\r\n"
           "Date: Tue, 12 Mar 2024 09:30:00 +0000\r\nMIME-Version: 1.0\r\n"
           "Content-Type: message/rfc822\r\n\r\n").encode()
    return top + inner


def test_fifty_level_nested_original(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, auditor=AUD)
    orig = nested_original(50)
    assert orig.count(b"message/rfc822") == 50
    rep = journal_report(ALICE, [("To", BOB)], original=orig)
    assert originals_of(rep) == [orig]
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    c = raw_user(gw, BOB, users[BOB]["password"])
    try:
        c.cmd("EXAMINE INBOX")
        for item in ("BODYSTRUCTURE", "ENVELOPE", "BODY.PEEK[1]"):
            r = c.cmd(f"FETCH 1 ({item})")
            assert r.ok, (item, r)
        c.cmd("LOGOUT")
    finally:
        c.close()
    assert_alive(gw)


def test_binary_8bit_original_over_bdat(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    every = bytes(b for b in range(1, 256) if b not in (10, 13))
    body = b"\r\n".join([every, b"\xff" * 900, b"\x80\x81 latin-1: Gr\xfc\xdfe", b"", every[::-1],
                         b"end"]) + b"\r\n"
    orig = make_original(subject="8-bit body", body=body,
                         content_type="application/octet-stream", cte="8bit")
    rep = journal_report(ALICE, [("To", BOB)], original=orig)
    send_bdat(gw, rep, chunk=700)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    gateway_mailbox_has(gw, [rep])
    assert_alive(gw)


def test_tnef_original(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    tnef = b"\x78\x9f\x3e\x22" + b"\x01\x06\x90\x08\x00" + os.urandom(600)
    b64 = base64.encodebytes(tnef).replace(b"\n", b"\r\n")
    body = (b"--tnef-boundary\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n"
            b"See attached.\r\n"
            b"--tnef-boundary\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\n"
            b"Content-Disposition: attachment; filename=\"winmail.dat\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"\r\n--tnef-boundary--\r\n")
    orig = make_original(subject="rich text from Outlook", body=body, cte=None,
                         content_type='multipart/mixed; boundary="tnef-boundary"',
                         extra_headers=["X-MS-TNEF-Correlator: <0001@contoso.example>"])
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=orig))
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    assert_alive(gw)


@pytest.mark.parametrize("cte", ["base64", "binary", "8bit"])
def test_original_part_with_transfer_encoding(archive_gw, cte):
    """The message/rfc822 part declares a Content-Transfer-Encoding (an O365 report once came
    with `binary`, breaking an archiver; base64 has been seen too): the archive shows the
    original message itself, decoded, byte-identical."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    orig = make_original(subject=f"original part with CTE {cte}",
                         body="Gr\u00fc\u00dfe\r\n" if cte != "base64" else "plain\r\n",
                         content_type="text/plain; charset=utf-8", cte="8bit")
    rep = journal_report(ALICE, [("To", BOB)], original=orig, original_cte=cte)
    if cte == "base64":
        assert orig not in rep
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_journal_report_of_an_ndr(archive_gw):
    """A journal report whose original is itself an NDR carries both X-MS-Journal-Report and
    X-MS-Exchange-Message-Is-Ndr: it is a journal report, and the NDR is the original."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    bounced = make_original(subject="to a mistyped address", sender=BOB, to="nobdy@contoso.example")
    ndr = ndr_wrap(bounced, journal_address="nobdy@contoso.example", ndr_to=BOB)
    exchange = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com"
    rep = journal_report(exchange, [("Recipient", BOB)], original=ndr,
                         msgid=f"<ndr-{os.urandom(4).hex()}@contoso.example>",
                         wrapper_headers=["X-MS-Exchange-Message-Is-Ndr:"])
    assert originals_of(rep) == [ndr]
    send_report(gw, rep)
    expected = {BOB: {"INBOX": [ndr]}}
    wait_archived(gw, items=1, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_report_part_without_fields_is_a_plain_copy(archive_gw):
    """A message with the journal marker whose report part has no Sender:/Recipient: lines
    (binary garbage) is not a parsable report: archived whole as a plain copy, by its
    envelope (nobody here) -> Unknown Addresses."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    garbage = bytes(range(256)) * 8
    rep = journal_report(ALICE, [("To", BOB)], report_body=base64.encodebytes(garbage)
                         .replace(b"\n", b"\r\n"), report_cte="base64")
    send_report(gw, rep)
    wait_archived(gw, items=1, unknown=1, users={ALICE: {"sent": 0}, BOB: {"inbox": 0}})
    check_archive(gw, {}, unknown=[Whole(rep)])
    assert_alive(gw)


def _truncated(rep: bytes) -> bytes:
    """The report without its closing boundary line (cut inside the original's body)."""
    return rep[:rep.rindex(b"Second line.")]


def _no_boundary(rep: bytes) -> bytes:
    """multipart/mixed whose Content-Type has no boundary parameter."""
    head, sep, body = rep.partition(b"\r\n\r\n")
    head = re.sub(rb";\r\n\tboundary=\"[^\"]+\"", b"", head)
    return head + sep + body


@pytest.mark.parametrize("damage", ["truncated", "no-boundary", "header-only"])
def test_malformed_report_does_not_crash_or_misfile(archive_gw, damage):
    """Damaged reports: the server keeps running, finishes the job, and files the message at
    most once per folder, and only for the report's participants or Unknown Addresses."""
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    orig = make_original(subject=f"damaged: {damage}", to=f"{BOB}, {CAROL}")
    rep = journal_report(ALICE, [("To", BOB)], original=orig)
    if damage == "truncated":
        msg = _truncated(rep)
    elif damage == "no-boundary":
        msg = _no_boundary(rep)
    else:
        msg = rep.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    send_report(gw, msg)
    st = wait_archived(gw, users={CAROL: {"inbox": 0, "sent": 0}})
    assert st["items"] <= 1, st
    seen = archive_contents(gw, users)
    assert not any(seen[CAROL].values()), f"carol got {seen[CAROL]}\n{gw.log_tail()}"
    for login, folders in seen.items():
        for f, msgs in folders.items():
            assert len(msgs) <= 1, f"{login} {f}: {len(msgs)} copies\n{gw.log_tail()}"
            if msgs:
                assert f in ("Sent", "INBOX", UNKNOWN, ENVELOPES) or f.startswith("Users/"), f
                owner = f.split("/")[1] if f.startswith("Users/") else login
                assert owner != CAROL, f"{f} of {login} holds the damaged report's message"
    assert_alive(gw)


def archive_contents(gw, users) -> dict:
    """{login: {folder: [bytes]}} for every user (no expectations)."""
    out = {}
    for login, u in users.items():
        c = imap_user(gw, login, u["password"])
        try:
            out[login] = {f: list(folder_messages(c, f).values())
                          for f in sorted(selectable(list_folders(c)))}
        finally:
            logout(c)
    return out


@pytest.mark.timeout(240)
def test_large_original(archive_gw):
    """A 12 MB original (base64 attachment) is archived byte-identical for sender, recipient
    and auditor."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    blob = base64.encodebytes(os.urandom(9 * 1024 * 1024)).replace(b"\n", b"\r\n")
    body = (b"--big\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--big\r\n"
            b"Content-Type: application/octet-stream; name=\"big.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--big--\r\n")
    orig = make_original(subject="a large attachment", body=body, cte=None,
                         content_type='multipart/mixed; boundary="big"')
    assert len(orig) > 12_000_000
    send_report(gw, journal_report(ALICE, [("To", BOB)], original=orig))
    expected = {ALICE: {"Sent": [orig]}, BOB: {"INBOX": [orig]}}
    wait_archived(gw, timeout=150, items=1, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])
    rss = gw.rss_kb()
    assert rss < 400_000, f"server RSS {rss} kB after archiving a 12 MB original"


@pytest.mark.timeout(240)
def test_report_with_10000_recipients(archive_gw):
    gw = archive_gw()
    rcpts = [("Recipient", f"member{i:05d}@bulk.example") for i in range(10000)]
    members = ["member00000@bulk.example", "member04999@bulk.example", "member09999@bulk.example"]
    add_users(gw, ALICE, *members, "outsider@bulk.example", auditor=AUD)
    orig = make_original(subject="to a very large list", to="everyone@bulk.example")
    rep = journal_report(ALICE, rcpts, original=orig)
    assert len(rep) > 300_000
    t0 = time.monotonic()
    send_report(gw, rep)
    expected = {ALICE: {"Sent": [orig]}, **{m: {"INBOX": [orig]} for m in members}}
    wait_archived(gw, timeout=150, items=1, unknown=0, users=folder_counts(expected))
    took = time.monotonic() - t0
    check_archive(gw, expected, unknown=[])
    assert took < 120, f"archiving a 10,000-recipient report took {took:.1f}s"
    assert_alive(gw)


# =========================================================================== durability, passwords


def test_restart_keeps_archive_and_uids(archive_gw):
    gw = archive_gw()
    add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    origs = [make_original(subject=f"before restart {i}") for i in range(3)]
    send_report(gw, journal_report(ALICE, [BOB], original=origs[0]))
    send_report(gw, journal_report(BOB, [CAROL], original=origs[1]))
    send_report(gw, journal_report("x@fabrikam.example", ["y@fabrikam.example"], original=origs[2]))
    stats = wait_archived(gw, items=3, unknown=1)
    before = {lg: user_snapshot(gw, lg) for lg in gw.archive_users}
    gw.restart()
    after_stats = wait_archived(gw, items=3, unknown=1)
    assert {k: v for k, v in after_stats.items()} == stats
    after = {lg: user_snapshot(gw, lg) for lg in gw.archive_users}
    assert after == before, "archive folders, UIDs or UIDVALIDITY changed across a restart"
    # new mail after the restart gets higher UIDs; the old ones stay
    late = make_original(subject="after restart")
    send_report(gw, journal_report(ALICE, [BOB], original=late))
    wait_archived(gw, items=4, users={BOB: {"inbox": 2}})
    now = user_snapshot(gw, BOB)
    vb, old = before[BOB]["INBOX"]
    vn, new = now["INBOX"]
    assert vn == vb and {u: m for u, m in new.items() if u in old} == old, (old.keys(), new.keys())
    (extra_uid,) = set(new) - set(old)
    assert extra_uid > max(old) and new[extra_uid] == late


def test_kill_before_archiving_completes(archive_gw):
    """Reports acknowledged with 250 are archived after a crash (SIGKILL right after the last
    250), each exactly once."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    origs = [make_original(subject=f"crash test {i}") for i in range(8)]
    for o in origs:
        send_report(gw, journal_report(ALICE, [BOB], original=o))
    gw.kill9()
    gw.start()
    expected = {ALICE: {"Sent": origs}, BOB: {"INBOX": origs}}
    wait_archived(gw, items=8, duplicates_merged=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_user_added_while_running_gets_the_next_report(archive_gw):
    """`user add` while serve runs: a report that arrives right after it is filed for the
    new user (not in Unknown Addresses)."""
    gw = archive_gw()
    add_users(gw, ALICE, BOB, auditor=AUD)
    o1 = make_original(subject="before carol existed")
    send_report(gw, journal_report(ALICE, [BOB], original=o1))
    wait_archived(gw, items=1, users={BOB: {"inbox": 1}})
    add_user(gw, CAROL)
    o2 = make_original(subject="carol's first mail", to=CAROL)
    send_report(gw, journal_report(ALICE, [CAROL], original=o2))
    expected = {ALICE: {"Sent": [o1, o2]}, BOB: {"INBOX": [o1]}, CAROL: {"INBOX": [o2]}}
    wait_archived(gw, items=2, unknown=0, users=folder_counts(expected))
    check_archive(gw, expected, unknown=[])


def test_reset_password(archive_gw):
    gw = archive_gw()
    users = add_users(gw, ALICE, BOB)
    o1 = make_original(subject="before the reset")
    send_report(gw, journal_report(ALICE, [BOB], original=o1))
    wait_archived(gw, items=1, users={BOB: {"inbox": 1}})
    old = users[BOB]["password"]
    r = gw.cli("user", "reset-password", BOB)
    assert r["login"] == BOB and isinstance(r["password"], str) and r["password"] != old, r
    new = r["password"]
    c = imaplib_connect(gw, "starttls")
    try:
        with pytest.raises(imaplib.IMAP4.error):
            c.login(BOB, old)
    finally:
        logout(c)
    gw.archive_users[BOB]["password"] = new
    o2 = make_original(subject="after the reset")
    send_report(gw, journal_report(ALICE, [BOB], original=o2))
    wait_archived(gw, items=2, users={BOB: {"inbox": 2}, ALICE: {"sent": 2}})
    c = imap_user(gw, BOB, new)
    try:
        assert selectable(list_folders(c)) == {"INBOX", "Sent"}
        got = list(folder_messages(c, "INBOX").values())
        assert o2 in got, f"mail archived after the reset is not readable: " \
                          f"{[describe(g) for g in got]}\n{gw.log_tail()}"
    finally:
        logout(c)
    # alice is not affected
    check_archive(gw, {ALICE: {"Sent": [o1, o2]}}, logins=[ALICE])
