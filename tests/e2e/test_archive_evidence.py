"""Archive evidence (issue 11): journal envelopes, exports, the integrity chain.

Over SMTP and IMAP with a real gateway: auditors see each report's journal envelope (Bcc and
expanded lists included) in `Journal Envelopes`, users do not; `archive export` writes the
originals byte-identical with their envelopes, a manifest and the chain segments, through the
running server and offline, as eml and mbox; the zip is checked by `archive verify-export` and
independently here (SHA-256, salted commitments, chain links, the Ed25519 checkpoint);
tampering with the zip, an item file or the chain is found; an export to a full disk fails
cleanly; IMAP keeps serving the intact items of a damaged archive."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from archiveharness import (  # noqa: F401  (archive_gw, make_igw are fixtures)
    ENVELOPES, UNKNOWN, add_user, add_users, archive_gw, check_archive, folder_messages,
    header_value, imap_user, journal_report, list_folders, logout, make_igw, make_original,
    plain_message, selectable, send_report, wait_archived,
)
from jgharness import BIN

AUD = "auditor@archive.example"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"


def run_cli(gw, *args, stdin: str | None = None):
    cmd = [str(BIN), "--config", str(gw.config_path), *map(str, args)]
    return subprocess.run(cmd, input=stdin.encode() if stdin else None,
                          stdin=None if stdin else subprocess.DEVNULL, capture_output=True,
                          timeout=300, cwd=gw.base)


def recovery_key(gw, tmp: Path) -> Path:
    out = gw.cli("archive", "recovery", "init", "--out", tmp)
    return Path(out["files"][0])


def export(gw, out: Path, *selection, unlock=(), stdin=None, expect_ok=True):
    p = run_cli(gw, "archive", "export", *selection, "--out", out, *unlock, "--json",
                stdin=stdin)
    if expect_ok:
        assert p.returncode == 0, f"export failed: {p.stdout!r} {p.stderr!r}\n{gw.log_tail()}"
        return json.loads(p.stdout)
    return p


def verify_export(gw, path: Path, *extra):
    p = run_cli(gw, "archive", "verify-export", path, "--json", *extra)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr


def unquote_mboxrd(data: bytes) -> bytes:
    out = []
    for line in data.splitlines(keepends=True):
        stripped = line.lstrip(b">")
        if stripped is not line and len(stripped) < len(line) and stripped.startswith(b"From "):
            line = line[1:]
        out.append(line)
    return b"".join(out)


def check_zip_independently(path: Path) -> dict:
    """What a third party can check with SHA-256, JSON and Ed25519 alone; returns
    {item: original bytes}."""
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest["signing_key"]))
        links = {}
        for seg in manifest["segments"]:
            cp = seg["checkpoint"]
            msg = f"journalgate archive checkpoint v1\n{cp['seq']}\n{cp['head']}\n{cp['time']}\n"
            key.verify(bytes.fromhex(cp["signature"]), msg.encode())  # raises when forged
            prev, seq = None, seg["first"]
            for line in z.read(seg["file"]).split(b"\n"):
                if not line:
                    continue
                link = json.loads(line)
                assert link["seq"] == seq and (prev is None or link["prev"] == prev), link
                prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
                links[link["seq"]] = link
            assert prev == cp["head"] and seq == cp["seq"] + 1, seg
        originals = {}
        mbox = z.read("messages.mbox") if "messages.mbox" in z.namelist() else b""
        for item in manifest["items"]:
            if item.get("file"):
                data = z.read(item["file"])
            else:
                off, length = item["mbox"]
                data = unquote_mboxrd(mbox[off:off + length])
            assert hashlib.sha256(data).hexdigest() == item["sha256"], item
            link = links[item["link"]]
            assert link["item"] == item["item"]
            commitment = hashlib.sha256(bytes.fromhex(item["salt"]) + data).hexdigest()
            assert link["sealed"]["commitment"] == commitment, item
            originals[item["item"]] = data
        return {"manifest": manifest, "originals": originals,
                "envelopes": {n: json.loads(z.read(n)) for n in z.namelist()
                              if n.startswith("envelopes/")}}


def setup(archive_gw, tmp_path):
    gw = archive_gw()
    key = recovery_key(gw, tmp_path / "keys")
    add_users(gw, ALICE, BOB, CAROL, auditor=AUD)
    sent = []
    for i in range(4):
        o = make_original(subject=f"evidence {i}", sender=ALICE, to=BOB,
                          body=f"From the desk of alice, item {i}\r\nFrom here on\r\n")
        r = journal_report(ALICE, [("To", BOB), ("Bcc", CAROL, "Expanded", "board@contoso.example")],
                           original=o)
        send_report(gw, r)
        sent.append(o)
    wait_archived(gw, items=4, users={ALICE: {"sent": 4}, BOB: {"inbox": 4}, CAROL: {"inbox": 4}})
    return gw, key, sent


def test_auditors_see_journal_envelopes_with_bcc_and_users_do_not(archive_gw, tmp_path):
    gw, _, sent = setup(archive_gw, tmp_path)
    c = imap_user(gw, AUD, gw.archive_users[AUD]["password"])
    try:
        assert ENVELOPES in selectable(list_folders(c))
        envelopes = list(folder_messages(c, ENVELOPES).values())
    finally:
        logout(c)
    assert len(envelopes) == 4
    for env in envelopes:
        text = env.decode()
        assert f"Bcc: {CAROL}, Expanded: board@contoso.example\r\n" in text, text
        assert f"To: {BOB}\r\n" in text and f"Sender: {ALICE}\r\n" in text
        assert header_value(env, "X-Journal-Item") is not None
    # bob only received it: no envelope folder, and his copy never names carol.
    c = imap_user(gw, BOB, gw.archive_users[BOB]["password"])
    try:
        folders = selectable(list_folders(c))
        assert ENVELOPES not in folders and UNKNOWN not in folders, folders
        assert all(CAROL.encode() not in m for m in folder_messages(c, "INBOX").values())
    finally:
        logout(c)


@pytest.mark.parametrize("fmt", ["eml", "mbox"])
def test_export_through_the_server_is_byte_identical_and_verifies(archive_gw, tmp_path, fmt):
    gw, key, sent = setup(archive_gw, tmp_path)
    out = tmp_path / f"bob-{fmt}.zip"
    report = export(gw, out, "--user", BOB, "--format", fmt, unlock=("--recovery", key))
    assert report["items"] == 4 and report["envelopes"] == 4 and report["unreadable"] == 0, report
    got = check_zip_independently(out)
    assert sorted(got["originals"].values()) == sorted(sent)
    for envs in got["envelopes"].values():
        assert any(r["field"] == "Bcc" and r["address"] == CAROL
                   and r["expanded"] == "board@contoso.example" for r in envs[0]["recipients"])
    signing = gw.cli("archive", "verify")["signing_key"]
    rc, res, err = verify_export(gw, out, "--key", signing)
    assert rc == 0 and res["ok"] and res["proven"] == 4, (res, err)
    assert not list(tmp_path.glob("*.part"))


def test_offline_export_by_an_auditor_of_everything_and_a_hold(archive_gw, tmp_path):
    gw, _, sent = setup(archive_gw, tmp_path)
    send_report(gw, plain_message(subject="stranger mail", sender="x@fabrikam.example",
                                  to="y@fabrikam.example"))
    wait_archived(gw, items=5, unknown=1)
    gw.cli("hold", "add", "case-1", "--user", BOB)
    assert gw.stop() == 0, gw.log_tail()
    pw = gw.archive_users[AUD]["password"] + "\n"
    everything = export(gw, tmp_path / "all.zip", "--all", "--format", "mbox",
                        unlock=("--by", AUD), stdin=pw)
    assert everything["items"] == 5, everything
    held = export(gw, tmp_path / "hold.zip", "--hold", "case-1", unlock=("--by", AUD), stdin=pw)
    assert held["items"] == 4, held
    none = export(gw, tmp_path / "none.zip", "--all", "--from", "2001-01-01", "--to",
                  "2001-12-31", unlock=("--by", AUD), stdin=pw)
    assert none["items"] == 0
    for name in ("all.zip", "hold.zip", "none.zip"):
        rc, res, err = verify_export(gw, tmp_path / name)
        assert rc == 0 and res["ok"], (name, res, err)
    assert sorted(check_zip_independently(tmp_path / "hold.zip")["originals"].values()) == \
        sorted(sent)


def test_a_tampered_export_is_refused(archive_gw, tmp_path):
    gw, key, _ = setup(archive_gw, tmp_path)
    good = tmp_path / "good.zip"
    export(gw, good, "--user", ALICE, unlock=("--recovery", key))
    with zipfile.ZipFile(good) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files["manifest.json"])

    def rewritten(name, change):
        path = tmp_path / f"bad-{name.replace('/', '_')}.zip"
        with zipfile.ZipFile(path, "w") as z:
            for n, data in files.items():
                z.writestr(n, change(data) if n == name else data)
        return path

    item = manifest["items"][0]["file"]
    seg = manifest["segments"][0]["file"]
    cases = {
        "an original changed": rewritten(item, lambda d: d.replace(b"evidence", b"EVIDENCE")),
        "a chain link changed": rewritten(seg, lambda d: d.replace(b'"filed"', b'"resealed"', 1)),
        "the manifest re-hashed": rewritten("manifest.json", lambda d: d.replace(
            manifest["items"][0]["sha256"].encode(),
            hashlib.sha256(files[item] + b"x").hexdigest().encode())),
    }
    for what, path in cases.items():
        rc, res, _ = verify_export(gw, path)
        assert rc == 1 and not res["ok"] and res["problems"], (what, res)
    rc, res, _ = verify_export(gw, good, "--key", "00" * 32)
    assert rc == 1 and "another key" in " ".join(res["problems"])


def test_export_to_a_full_disk_fails_cleanly(archive_gw, tmp_path, tmpfs_dir):
    gw, key, _ = setup(archive_gw, tmp_path)
    for i in range(3):
        # ~2.8 MB of base64 (hardly compressible) each: more than the 4 MB tmpfs holds.
        body = base64.encodebytes(os.urandom(2_000_000)).replace(b"\n", b"\r\n")
        o = make_original(subject=f"bulk {i}", sender=ALICE, to=BOB, body=body)
        send_report(gw, journal_report(ALICE, [("To", BOB)], original=o))
    wait_archived(gw, items=7)
    out = tmpfs_dir / "full.zip"
    p = export(gw, out, "--user", BOB, "--format", "mbox", unlock=("--recovery", key),
               expect_ok=False)
    assert p.returncode != 0 and b"export to" in p.stderr, (p.stdout, p.stderr)
    assert not out.exists() and not list(tmpfs_dir.glob("*.part")), list(tmpfs_dir.iterdir())
    # The gateway did not notice: it takes mail and exports elsewhere.
    send_report(gw, journal_report(ALICE, [("To", BOB)],
                                   original=make_original(subject="after", sender=ALICE, to=BOB)))
    wait_archived(gw, items=8)
    export(gw, tmp_path / "ok.zip", "--user", BOB, unlock=("--recovery", key))


def test_verify_finds_tampered_items_and_imap_serves_the_rest(archive_gw, tmp_path):
    gw, _, sent = setup(archive_gw, tmp_path)
    clean = gw.cli("archive", "verify")
    assert clean["ok"] and clean["items_checked"] == 8 and clean["signed_up_to"] >= 1, clean
    # Items 1, 3, 5, 7 are the originals (each followed by its envelope), all in one pack.
    where = {i: gw.cli("archive", "item", i) for i in (1, 3, 5, 7)}
    pack = Path(where[1]["file"])
    data = bytearray(pack.read_bytes())
    victim = where[3]
    data[victim["offset"] + victim["length"] - 20] ^= 0xFF  # inside item 3's payload
    last = where[7]
    del data[last["offset"] + last["length"] // 2:]  # item 7 cut short, its envelope gone
    pack.write_bytes(bytes(data))
    rc, out, err = gw.cli_raw("archive", "verify")
    res = json.loads(out)
    assert rc == 1 and not res["ok"], res
    kinds = {(p["item"], p["kind"]) for p in res["problems"]}
    assert kinds == {(3, "altered"), (7, "altered"), (8, "altered")}, kinds
    # IMAP keeps serving the intact items.
    c = imap_user(gw, BOB, gw.archive_users[BOB]["password"])
    try:
        c.select("INBOX", readonly=True)
        ok = 0
        for uid in range(1, 5):
            typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
            if typ == "OK" and data and isinstance(data[0], tuple):
                assert data[0][1] in sent
                ok += 1
        assert ok == 2, ok
        assert c.noop()[0] == "OK"
    finally:
        logout(c)


def test_folder_names_and_internal_senders(archive_gw, tmp_path):
    gw = archive_gw(archive={"inbox_folder": "Journal Incoming",
                             "sent_folder": "Journal Outgoing",
                             "internal_domains": ["contoso.example"]},
                    envelope_headers=[{"network": "127.0.0.0/8", "header": "X-Gm-Original-To"}])
    add_users(gw, ALICE, BOB)
    # A Google Workspace style BCC copy: recipients in X-Gm-Original-To, sender internal.
    msg = plain_message(subject="bcc journaling", sender=ALICE, to="partner@fabrikam.example",
                        extra_headers=[f"X-Gm-Original-To: {BOB}"])
    send_report(gw, msg, sender=ALICE)
    wait_archived(gw, items=1, users={ALICE: {"sent": 1}, BOB: {"inbox": 1}})
    for login, folder in ((ALICE, "Journal Outgoing"), (BOB, "Journal Incoming")):
        c = imap_user(gw, login, gw.archive_users[login]["password"])
        try:
            folders = list_folders(c)
            assert {"INBOX", "Journal Incoming", "Journal Outgoing"} <= set(folders), folders
            assert "\\sent" in folders["Journal Outgoing"]
            got = list(folder_messages(c, folder).values())
            assert len(got) == 1 and b"bcc journaling" in got[0]
            assert folder_messages(c, "INBOX") == {}
        finally:
            logout(c)
    # A bad name is refused at start with a clear error.
    gw.stop()
    bad = archive_gw(archive={"sent_folder": "Users"}, start=False)
    p = subprocess.run([str(BIN), "--config", str(bad.config_path), "archive", "stats"],
                       capture_output=True, timeout=60, cwd=bad.base)
    assert p.returncode != 0 and b"sent_folder" in p.stderr, p.stderr
