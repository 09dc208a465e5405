"""Test harness for journalgate end-to-end tests.

Everything here talks to a real `target/release/journalgate` process over real
loopback sockets. Each `Gateway` has its own temp dir, config file and ports, so
tests can run in parallel (pytest-xdist).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import poplib
import random
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("JG_BIN") or REPO / "target" / "release" / "journalgate")
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"

HOSTNAME = "gw.test"
SOCK_TIMEOUT = 60  # seconds, for every client socket
READY_TIMEOUT = 20
CLI_TIMEOUT = 120

# poplib refuses lines longer than 2048 bytes; real messages may have longer ones.
poplib._MAXLINE = 1 << 20

MBX_ID_RE = re.compile(r"^mbx-[0-9a-f]{32}$")


# --------------------------------------------------------------------------- utils


_rng = random.SystemRandom()
# Ports already handed out by this test process: a random pick must not repeat one that a
# server of the same test is about to bind (seen: pebble-challtestsrv and journalgate's
# ACME http-01 listener were given the same port).
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback TCP port (bind, read, close).

    Ports handed out by `bind(0)` come from the ephemeral range, which every outgoing
    client connection of the parallel tests also draws from, so one of them can grab the
    port before the server binds it. Prefer a random port just below that range; fall
    back to bind(0)."""
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(100):
            port = _rng.randint(max(10000, low - 12000), low - 1)
            if port in _given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _given.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        _given.add(port)
        return port


def unverified_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def toml_value(v) -> str:
    """A TOML value; a dict (below a table) is written as an inline table, e.g.
    `[archive] envelope_headers = [{network = "...", header = "..."}]`."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot encode {v!r} as TOML")


def to_toml(cfg: dict) -> str:
    top = []
    tables = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines = [f"[{k}]"] + [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
            tables.append("\n".join(lines))
        else:
            top.append(f"{k} = {toml_value(v)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def crlf(data: bytes) -> bytes:
    """Normalise line endings to CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def strip_received(msg: bytes) -> bytes:
    """Remove the first header field (the gateway's Received:, with its folded
    continuation lines) and return the rest, unchanged."""
    assert msg[:9].lower() == b"received:", f"message does not start with Received: {msg[:200]!r}"
    pos = msg.index(b"\r\n") + 2
    while msg[pos : pos + 1] in (b" ", b"\t"):
        pos = msg.index(b"\r\n", pos) + 2
    return msg[pos:]


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def build_message(subject="test", body: bytes | str = b"hello\r\n", sender="alice@contoso.example",
                  to="journal@gw.test", date="Mon, 16 Nov 2026 10:00:00 +0000", msgid=None,
                  extra_headers=(), content_type="text/plain; charset=utf-8",
                  cte="8bit") -> bytes:
    """Build a small CRLF message as bytes (body may be str or bytes)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if msgid is None:
        msgid = f"<{os.urandom(8).hex()}@contoso.example>"
    hdrs = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}",
            f"Message-ID: {msgid}", "MIME-Version: 1.0", f"Content-Type: {content_type}"]
    if cte:
        hdrs.append(f"Content-Transfer-Encoding: {cte}")
    hdrs += list(extra_headers)
    return ("\r\n".join(hdrs) + "\r\n\r\n").encode("utf-8") + body


# the SMTP/POP3 tests' name for it (every caller passes keywords)
make_message = build_message


# --------------------------------------------------------------------------- gateway


class CliError(AssertionError):
    pass


class _PortInUse(Exception):
    pass


class Gateway:
    def __init__(self, base: Path, overrides: dict | None = None, data_dir: Path | None = None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("smtp", "smtps", "pop3", "pop3s")}
        self.data_dir = Path(data_dir) if data_dir else self.base / "data"
        cfg = {
            "hostname": HOSTNAME,
            "data_dir": str(self.data_dir),
            "smtp": {
                "listen": [f"127.0.0.1:{self.ports['smtp']}"],
                "listen_tls": [f"127.0.0.1:{self.ports['smtps']}"],
            },
            "pop3": {
                "listen": [f"127.0.0.1:{self.ports['pop3']}"],
                "listen_tls": [f"127.0.0.1:{self.ports['pop3s']}"],
            },
            "imap": {"listen": [], "listen_tls": []},
            "console": {"listen": ""},
            "auth": {"failure_delay_ms": 200},
            "spool": {"min_free_bytes": 0},
        }
        self.config = deep_merge(cfg, overrides or {})
        self.config_path = self.base / "journalgate.toml"
        self.config_path.write_text(to_toml(self.config))
        self.stdout_path = self.base / "server.stdout"
        self.stderr_path = self.base / "server.stderr"
        self.proc: subprocess.Popen | None = None

    # ports, by listener name (imap and imaps only on gateways with IMAP listeners, made by
    # imapharness.make_igw); current after the listeners were moved to fresh ports on EADDRINUSE
    smtp_port = property(lambda self: self.ports["smtp"])
    smtps_port = property(lambda self: self.ports["smtps"])
    pop3_port = property(lambda self: self.ports["pop3"])
    pop3s_port = property(lambda self: self.ports["pop3s"])
    imap_port = property(lambda self: self.ports["imap"])
    imaps_port = property(lambda self: self.ports["imaps"])

    # process control
    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.poll() is None, "server not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _repick_ports(self):
        """New ports for every listener in self.ports (used after EADDRINUSE)."""
        mapping = {}
        for name, old in list(self.ports.items()):
            new = free_port()
            self.ports[name] = new
            mapping[f"127.0.0.1:{old}"] = f"127.0.0.1:{new}"

        def sub(v):
            if isinstance(v, dict):
                return {k: sub(x) for k, x in v.items()}
            if isinstance(v, list):
                return [sub(x) for x in v]
            if isinstance(v, str):
                return mapping.get(v, v)
            return v

        self.config = sub(self.config)
        self.config_path.write_text(to_toml(self.config))

    def start(self, timeout=READY_TIMEOUT, _attempts=4):
        """Start `serve` and wait for `journalgate ready`. If a port was taken in the
        meantime (another process won the race), retry with fresh ports."""
        for attempt in range(_attempts):
            try:
                return self._start_once(timeout)
            except _PortInUse:
                if attempt == _attempts - 1:
                    raise AssertionError(f"ports kept being taken\n{self.log_tail()}") from None
                self._repick_ports()

    def _start_once(self, timeout):
        assert not self.running, "already running"
        if not BIN.exists():
            raise AssertionError(f"{BIN} missing: run cargo build --release")
        env = dict(os.environ)
        env.setdefault("JOURNALGATE_LOG", "info")
        env["NO_COLOR"] = "1"
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        mark = self.stdout_path.stat().st_size
        marker = "\n=== start at %s ===\n" % time.strftime("%H:%M:%S")
        err.write(marker.encode())
        err.flush()
        err_mark = self.stderr_path.stat().st_size
        self.proc = subprocess.Popen(
            [str(BIN), "--config", str(self.config_path), "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=self.base,
        )
        out.close()
        err.close()
        deadline = time.monotonic() + timeout
        while True:
            with open(self.stdout_path, "rb") as f:
                f.seek(mark)
                if b"journalgate ready" in f.read():
                    return self
            rc = self.proc.poll()
            if rc is not None:
                with open(self.stderr_path, "rb") as f:
                    f.seek(err_mark)
                    if b"Address already in use" in f.read():
                        raise _PortInUse()
                raise AssertionError(
                    f"journalgate serve exited with {rc} before ready\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(
                    f"journalgate not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout=20):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"server did not exit within {timeout}s of SIGTERM")
        return self.proc.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self):
        self.stop()
        return self.start()

    # memory
    def _status(self, key) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"{key} not in /proc/{self.pid}/status")

    def rss_kb(self) -> int:
        return self._status("VmRSS")

    def peak_rss_kb(self) -> int:
        return self._status("VmHWM")

    # logs
    def log_text(self) -> str:
        parts = []
        for p in (self.stdout_path, self.stderr_path):
            if p.exists():
                parts.append(p.read_bytes().decode("utf-8", "replace"))
        return "\n".join(parts)

    def log_tail(self, n=60) -> str:
        lines = self.log_text().splitlines()
        return "--- server log (tail) ---\n" + "\n".join(lines[-n:])

    # CLI
    def cli_raw(self, *args, json_flag=True, timeout=CLI_TIMEOUT):
        cmd = [str(BIN), "--config", str(self.config_path), *map(str, args)]
        if json_flag:
            cmd.append("--json")
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, cwd=self.base)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def cli(self, *args, timeout=CLI_TIMEOUT):
        rc, out, err = self.cli_raw(*args, timeout=timeout)
        if rc != 0:
            raise CliError(f"journalgate {' '.join(map(str, args))} exited {rc}\n"
                           f"stdout: {out}\nstderr: {err}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise CliError(f"journalgate {' '.join(map(str, args))}: stdout is not one JSON "
                           f"object ({e}): {out!r}\nstderr: {err}") from None

    def create_mailbox(self, name=None, description=None) -> dict:
        args = ["mailbox", "create"]
        if name is not None:
            args += ["--name", name]
        if description is not None:
            args += ["--description", description]
        return self.cli(*args)

    def show(self, mbx_id) -> dict:
        return self.cli("mailbox", "show", mbx_id)

    # data dir helpers
    def tmp_files(self):
        d = self.data_dir / "tmp"
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir())

    def msg_dir(self, mbx_id) -> Path:
        return self.data_dir / "mailboxes" / mbx_id / "msg"


# --------------------------------------------------------------------------- SMTP


def smtp_connect(gw: Gateway, tls="starttls", timeout=SOCK_TIMEOUT) -> smtplib.SMTP:
    """tls: 'starttls' (plain port + STARTTLS), 'implicit' (smtps port), None (plain)."""
    if tls == "implicit":
        s = smtplib.SMTP_SSL("127.0.0.1", gw.smtps_port, local_hostname="client.test",
                             timeout=timeout, context=unverified_ctx())
        s.ehlo()
        return s
    s = smtplib.SMTP("127.0.0.1", gw.smtp_port, local_hostname="client.test", timeout=timeout)
    s.ehlo()
    if tls == "starttls":
        code, resp = s.starttls(context=unverified_ctx())
        assert code == 220, (code, resp)
        s.ehlo()
    return s


def send_smtp(gw: Gateway, rcpts, msg: bytes, sender="journal@contoso.example", tls="starttls",
              mail_options=("BODY=8BITMIME",), timeout=SOCK_TIMEOUT):
    """Send one message; raises smtplib exceptions on refusal. Returns refused dict ({})."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    with contextlib.closing(smtp_connect(gw, tls=tls, timeout=timeout)) as s:
        refused = s.sendmail(sender, list(rcpts), msg, mail_options=list(mail_options))
        s.quit()
    return refused


class LineClient:
    """A CRLF line client over a real loopback socket (implicit TLS optional): the plumbing
    RawSMTP, RawPOP3 and imapharness.RawIMAP share. `buf` holds what was read but not yet
    consumed; `timeout` is the socket timeout the client returns to."""

    def __init__(self, port, timeout=SOCK_TIMEOUT, implicit_tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        if implicit_tls:
            self.sock = unverified_ctx().wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.buf = b""

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def recv_some(self) -> bytes:
        """The next bytes from the socket (ConnectionError at EOF); not added to buf."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def _fill(self):
        self.buf += self.recv_some()

    def readline(self) -> bytes:
        """The next CRLF-terminated line, without its CRLF."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def take(self, n: int) -> bytes:
        """Exactly the next n bytes."""
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _wrap_tls(self):
        """Switch the connection to TLS (after the server's STARTTLS/STLS go-ahead)."""
        self.sock = unverified_ctx().wrap_socket(self.sock, server_hostname=HOSTNAME)

    def closed_by_server(self, timeout=10) -> bool:
        """True when the server closes the connection (EOF/reset) within timeout; what it
        sent before is kept in buf."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)


class RawSMTP(LineClient):
    """Line-level SMTP client for the cases smtplib can't express."""

    def __init__(self, port, timeout=SOCK_TIMEOUT, implicit_tls=False, greet=True):
        super().__init__(port, timeout=timeout, implicit_tls=implicit_tls)
        self.greeting = self.reply() if greet else None

    def reply(self):
        """Read one (possibly multi-line) reply -> (code:int, text:str of all lines)."""
        lines = []
        while True:
            line = self.readline()
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise AssertionError(f"malformed SMTP reply {lines!r}") from None
        return code, "\n".join(lines)

    def cmd(self, line: str | bytes):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.test"):
        code, text = self.cmd(f"EHLO {name}")
        assert code == 250, text
        return [ln[4:] for ln in text.split("\n")[1:]]

    def starttls(self):
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        assert not self.buf, "data after STARTTLS reply"
        self._wrap_tls()


def dot_stuff(msg: bytes) -> bytes:
    lines = msg.split(b"\r\n")
    return b"\r\n".join((b"." + ln) if ln.startswith(b".") else ln for ln in lines)


# --------------------------------------------------------------------------- POP3


def pop3_connect(gw: Gateway, mode="stls", timeout=SOCK_TIMEOUT) -> poplib.POP3:
    """mode: 'stls' (plain port + STLS), 'ssl' (pop3s port), 'plain' (no TLS)."""
    if mode == "ssl":
        return poplib.POP3_SSL("127.0.0.1", gw.pop3s_port, timeout=timeout, context=unverified_ctx())
    p = poplib.POP3("127.0.0.1", gw.pop3_port, timeout=timeout)
    if mode == "stls":
        p.stls(context=unverified_ctx())
    return p


def pop3_login(gw: Gateway, user, password, mode="stls", timeout=SOCK_TIMEOUT) -> poplib.POP3:
    p = pop3_connect(gw, mode=mode, timeout=timeout)
    try:
        p.user(user)
        p.pass_(password)
    except Exception:
        with contextlib.suppress(Exception):
            p.close()
        raise
    return p


def pop3_retr(p: poplib.POP3, n: int) -> bytes:
    resp, lines, octets = p.retr(n)
    assert resp.startswith(b"+OK"), resp
    return b"".join(ln + b"\r\n" for ln in lines)


def pop3_fetch_all(gw: Gateway, mbx: dict, delete=False, mode="stls"):
    """Return [(uidl, message_bytes)] for a mailbox (login via its id + password)."""
    p = pop3_login(gw, mbx["id"], mbx["password"], mode=mode)
    try:
        out = []
        _, listing, _ = p.uidl()
        for entry in listing:
            num, uid = entry.split()
            out.append((uid.decode(), pop3_retr(p, int(num))))
            if delete:
                p.dele(int(num))
        p.quit()
    finally:
        with contextlib.suppress(Exception):
            p.close()
    return out


def pop3_stat(gw: Gateway, mbx: dict, mode="stls"):
    p = pop3_login(gw, mbx["id"], mbx["password"], mode=mode)
    try:
        st = p.stat()
        p.quit()
    finally:
        with contextlib.suppress(Exception):
            p.close()
    return st


def auth_plain_b64(user: str, password: str) -> str:
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def pop3_error_text(exc: Exception) -> bytes:
    arg = exc.args[0] if exc.args else b""
    return arg if isinstance(arg, bytes) else str(arg).encode()


class RawPOP3(LineClient):
    """Line-level POP3 client, implicit TLS by default; the greeting must be +OK."""

    def __init__(self, port, timeout=SOCK_TIMEOUT, implicit_tls=True):
        super().__init__(port, timeout=timeout, implicit_tls=implicit_tls)
        assert self.readline().startswith(b"+OK")

    def cmd(self, c: str) -> bytes:
        """Send one command line; its first response line."""
        self.send(c.encode() + b"\r\n")
        return self.readline()


def pop3_retr_raw(gw: Gateway, mbx: dict, timeout=SOCK_TIMEOUT, lf_lines=False) -> list[bytes]:
    """Retrieve every message over POP3S with a byte-level reader: a response ends
    only at CRLF.CRLF; CRLF-delimited lines are unstuffed (RFC 1939), and with
    lf_lines=True also lines that follow a bare LF (for servers that stuff those too)."""
    c = RawPOP3(gw.pop3s_port, timeout=timeout)

    def cmd(line):
        r = c.cmd(line)
        assert r.startswith(b"+OK"), (line.split()[0], r)
        return r

    try:
        cmd(f"USER {mbx['id']}")
        cmd(f"PASS {mbx['password']}")
        count = int(cmd("STAT").split()[1])
        out = []
        for n in range(1, count + 1):
            cmd(f"RETR {n}")
            data = b"\r\n" + c.buf
            while b"\r\n.\r\n" not in data:
                data += c.recv_some()
            body, c.buf = data[2:].split(b"\r\n.\r\n", 1) if not data.startswith(b"\r\n.\r\n") \
                else (b"", data[5:])
            lines = body.split(b"\r\n") if body else []
            msg = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
            if lf_lines:
                msg = re.sub(rb"(?<!\r)\n\.", b"\n", msg)
            out.append(msg)
        c.send(b"QUIT\r\n")
        return out
    finally:
        c.close()


# --------------------------------------------------------------------------- fetchmail, getmail6


def fetchmail_rc(home: Path, proto: str, port: int, implicit_tls: bool, mbx: dict):
    """Write home/fetchmailrc: poll 127.0.0.1:port with `proto` (IMAP or POP3) as the
    mailbox, over implicit TLS or STARTTLS/STLS, no certificate check, fetch and delete
    everything and append it to home/collected.mbox. Returns (rc, mbox, env to run
    fetchmail with)."""
    home.mkdir()
    out = home / "collected.mbox"
    ssl_opts = "ssl" if implicit_tls else 'sslproto "auto"'
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 with proto {proto} port {port} timeout 60\n"
        f'  user "{mbx["id"]}" there with password "{mbx["password"]}" is "root" here\n'
        f"  {ssl_opts} no sslcertck\n"
        "  no keep fetchall\n"
        f'  mda "cat >> {out}"\n'
    )
    rc.chmod(0o600)
    return rc, out, dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))


def run_getmail(exe: str, gdir: Path, retriever: str, port: int, mbx: dict, maildir: Path,
                deliver_as: str | None, retriever_options: str = "") -> subprocess.CompletedProcess:
    """Write gdir/getmailrc and run getmail (getmail6) once with it: `retriever`
    (e.g. SimplePOP3SSLRetriever) on 127.0.0.1:port logged in as the mailbox (plus the
    `retriever_options` lines), delivering into `maildir` (as `deliver_as` when given: see
    the conftest fixture maildir_for_getmail), reading and deleting every message."""
    gdir.mkdir()
    rc = gdir / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        f"type = {retriever}\n"
        "server = 127.0.0.1\n"
        f"port = {port}\n"
        f"username = {mbx['id']}\n"
        f"password = {mbx['password']}\n"
        + retriever_options
        + "timeout = 60\n\n"
        "[destination]\n"
        "type = Maildir\n"
        f"path = {maildir}/\n"
        + (f"user = {deliver_as}\n" if deliver_as else "")
        + "\n[options]\n"
        "verbose = 1\n"
        "read_all = true\n"
        "delete = true\n"
        "delivered_to = false\n"
        "received = false\n"
    )
    return subprocess.run([exe, "--getmaildir", str(gdir), "--rcfile", str(rc)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def send_raw_data(gw: Gateway, address: str, raw: bytes):
    """One transaction over a raw socket with DATA carrying exactly `raw` (dot-stuffed on the
    wire here); asserts every reply is the success one."""
    with RawSMTP(gw.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<journal@contoso.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{address}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(raw) + b".\r\n")
        code, text = c.reply()
        assert code == 250, text
