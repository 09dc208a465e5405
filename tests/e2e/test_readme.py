"""The README's quick start, run as written (issue 10): `journalgate serve` with no
configuration in an empty directory, then every command of the quick-start block with the
mailbox ID and password it printed filled in."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from jgharness import BIN

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_commands_work_as_written(tmp_path):
    commands = quick_start_commands()
    assert commands[0].startswith("cargo run --release -- serve &"), commands[0]
    assert len(commands) >= 7, commands
    serve = subprocess.Popen([str(BIN), "serve"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        ready = b""
        deadline = time.monotonic() + 30
        while b"journalgate ready" not in ready and time.monotonic() < deadline:
            ready += serve.stdout.readline()
        if b"Address already in use" in ready:
            pytest.skip(f"a default port is taken on this machine: {ready!r}")
        assert b"journalgate ready: smtp 127.0.0.1:2525" in ready, ready
        mbx = None
        outputs = []
        for line in commands[1:]:
            line = line.replace("target/release/journalgate", str(BIN))
            if mbx:
                line = line.replace("mbx-...", mbx["id"]).replace("PASSWORD", mbx["password"])
            if "mailbox create" in line:
                line = line.split("#")[0].strip() + " --json"
            p = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True,
                               timeout=60, stdin=subprocess.DEVNULL)
            outputs.append((line, p.returncode, p.stdout[-400:], p.stderr[-400:]))
            assert p.returncode == 0, outputs[-1]
            if "mailbox create" in line:
                mbx = json.loads(p.stdout)
                assert re.fullmatch(r"mbx-[0-9a-f]{32}", mbx["id"]), mbx
        listing, retr, imap, dele = (o[2] for o in outputs[-4:])
        assert re.match(rb"1 \d+", listing), outputs[-4]
        assert b"Subject: test" in retr, outputs[-3]
        assert b"Subject: test" in imap, outputs[-2]
        # DELE took effect: the mailbox is empty now
        p = subprocess.run(["curl", "-s", "--ssl-reqd", "-k", "pop3://127.0.0.1:1110/",
                            "-u", f"{mbx['id']}:{mbx['password']}"], capture_output=True,
                           timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == b"", p
    finally:
        serve.terminate()
        serve.wait(30)
