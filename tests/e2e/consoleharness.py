"""Harness for the web console, JSON API, metrics and alerts (docs/CONSOLE.md).

Builds on jgharness. Everything talks to a real `target/release/journalgate` over real sockets.

Gateway
  `console_gw(...)`  fixture (factory) -> Console: a gateway whose `[console] listen` is a free
      port, with an admin (`journalgate admin add NAME --json`) and two API tokens (read-write and
      read-only, `journalgate token create --name N [--read-only] --json`) made through the CLI.
      `host=` puts the console on another local address (see `non_loopback_ipv4`).
  `Console.request(...)`  one HTTPS (or plain HTTP) request with http.client, certificate not
      verified; `Console.api(...)` the same under /api/v1 with the Bearer token; `api_ok` asserts
      the status and returns the JSON; `curl_api` does it with curl.
  `WebSession`  a cookie jar + CSRF token for the HTML console: `login()`, `page()`, `submit()`
      (fills a form from the page, hidden csrf included), `api()` (session cookie + X-CSRF-Token).
  `Html` a small element tree (stdlib html.parser) with a CSS-ish `select`/`one`:
      `tag`, `#id`, `.class`, `[attr]`, `[attr=value]`, descendant combinator.

Peers
  `WebhookReceiver`  http.server in a thread that records every POSTed JSON body.
  `SmtpSink`  a small threaded plain SMTP server on loopback that records every message.
  `Prometheus`  our own prometheus process (own config, data dir and port) scraping the
      console's /metrics with a Bearer token and insecure_skip_verify.
  `parse_metrics(text)`  Prometheus text format 0.0.4 -> Metrics (samples, types).

Browser
  `browser` fixture: headless Debian Chromium through chromedriver (selenium), accepting the
      self-signed certificate; `browser.shot(name)` saves a screenshot into the test's tmp dir
      (and into $JG_TEST_OUTPUT/<test name>/ when set). Skips when chromium/chromedriver are
      missing (fails instead under CI, where tests/run.sh installs them).
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.policy
import email.utils
import html.parser
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from jgharness import HOSTNAME, Gateway, deep_merge, free_port, unverified_ctx, wait_until

IN_CI = bool(os.environ.get("CI"))
HTTP_TIMEOUT = 30
API = "/api/v1"

# The contract's table (docs/CONSOLE.md, "JSON API"): (method, path template).
CONTRACT_ENDPOINTS = [
    ("get", "/api/v1/status"),
    ("get", "/api/v1/mailboxes"),
    ("post", "/api/v1/mailboxes"),
    ("get", "/api/v1/mailboxes/{id}"),
    ("patch", "/api/v1/mailboxes/{id}"),
    ("delete", "/api/v1/mailboxes/{id}"),
    ("post", "/api/v1/mailboxes/{id}/reset-password"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users/{login}"),
    ("patch", "/api/v1/users/{login}"),
    ("delete", "/api/v1/users/{login}"),
    ("post", "/api/v1/users/{login}/reset-password"),
    ("get", "/api/v1/certificate"),
    ("post", "/api/v1/certificate/renew"),
    ("post", "/api/v1/certificate"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/alerts"),
    ("post", "/api/v1/trace"),
]

ERROR_STATUS = {"unauthorized": 401, "read_only": 403, "csrf": 403, "not_found": 404,
                "conflict": 409, "bad_request": 400, "payload_too_large": 413,
                "unavailable": 503, "internal": 500}

MAILBOX_FIELDS = {"id", "address", "name", "description", "status", "created", "tenant",
                  "messages", "bytes", "last_received", "last_collected"}
USER_FIELDS = {"id", "login", "aliases", "name", "auditor", "created"}
EVENT_KINDS = {"accepted", "rejected", "login", "login_failed", "collected", "deleted", "admin"}


# --------------------------------------------------------------------------- small helpers


def rfc3339(s) -> datetime.datetime:
    """Parse an RFC 3339 time (with Z or an offset); AssertionError if it is not one."""
    assert isinstance(s, str), f"not an RFC 3339 time string: {s!r}"
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)", s)
    assert m, f"not an RFC 3339 time: {s!r}"
    frac = (m.group(3) or "")[:7].ljust(7, "0") if m.group(3) else ""
    tz = "+00:00" if m.group(4) in ("Z", "z") else m.group(4)
    return datetime.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{frac}{tz}")


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def non_loopback_ipv4() -> str | None:
    """A local IPv4 address that is not loopback (a connection from this host to it comes from a
    non-loopback source address), or None."""
    cands = []
    with contextlib.suppress(Exception):
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
        cands += re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    with contextlib.suppress(Exception):
        cands += socket.gethostbyname_ex(socket.gethostname())[2]
    for ip in cands:
        if ip.startswith("127."):
            continue
        try:
            with socket.socket() as srv:
                srv.bind((ip, 0))
                srv.listen(1)
                with socket.create_connection((ip, srv.getsockname()[1]), timeout=3) as c:
                    if not c.getsockname()[0].startswith("127."):
                        return ip
        except OSError:
            continue
    return None


def require_tool(*names: str) -> dict[str, str]:
    """{name: path} for the given executables; skip (fail under CI) when one is missing."""
    out, missing = {}, []
    for n in names:
        p = shutil.which(n) or (f"/usr/bin/{n}" if os.access(f"/usr/bin/{n}", os.X_OK) else None)
        if p:
            out[n] = p
        else:
            missing.append(n)
    if missing:
        msg = f"{', '.join(missing)} not installed (tests/run.sh installs them with apt-get)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return out


# --------------------------------------------------------------------------- HTTP


class Resp:
    """One HTTP response: status, reason, headers (all of them, in order), body bytes."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                 method: str = "", path: str = ""):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.method = method
        self.path = path

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"{self.method} {self.path}: body is not JSON ({self.status}, "
                                 f"{self.header('content-type')}): {self.body[:600]!r}") from None

    def html(self) -> "Html":
        return Html(self.text)

    @property
    def location_path(self) -> str | None:
        loc = self.header("location")
        return urllib.parse.urlsplit(loc).path if loc is not None else None

    def __repr__(self):
        return f"<{self.method} {self.path} -> {self.status} {self.reason} {self.body[:400]!r}>"


def http_request(host: str, port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, tls=True, timeout=HTTP_TIMEOUT) -> Resp:
    """One request on a fresh connection (Connection: close); path is sent exactly as given."""
    if tls:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=unverified_ctx())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = {"Connection": "close", "User-Agent": "journalgate-e2e"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.reason, list(r.getheaders()), data, method, path)
    finally:
        conn.close()


def assert_error(r: Resp, code: str, status: int | None = None):
    """The response is the contract's JSON error with this code (and its status)."""
    status = status or ERROR_STATUS[code]
    assert r.status == status, f"expected {status} {code}, got {r!r}"
    ct = (r.header("content-type") or "").lower()
    assert "application/json" in ct, f"error answer is not JSON (Content-Type {ct!r}): {r!r}"
    j = r.json()
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), \
        f"error body is not {{'error': {{...}}}}: {j!r}"
    assert j["error"].get("code") == code, f"expected error code {code!r}, got {j!r}"
    assert isinstance(j["error"].get("message"), str) and j["error"]["message"], \
        f"error without a message: {j!r}"
    return j


_DEFAULT = object()


class Console:
    """A gateway with its console listener, admin and tokens."""

    def __init__(self, gw: Gateway, host="127.0.0.1"):
        self.gw = gw
        self.host = host
        self.admin: str | None = None
        self.password: str | None = None
        self.token: str | None = None
        self.ro_token: str | None = None
        self.tokens: dict[str, dict] = {}

    @property
    def port(self) -> int:
        return self.gw.ports["console"]

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    # --- raw requests
    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                token=None, tls=True, timeout=HTTP_TIMEOUT) -> Resp:
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return http_request(self.host, self.port, method, path, body, hdrs, tls=tls,
                            timeout=timeout)

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def api(self, method: str, path: str, body=None, token=_DEFAULT, headers=None) -> Resp:
        """A request under /api/v1 (path relative to it, or absolute) with the read-write
        token unless another (or None: no Authorization) is given."""
        if not path.startswith("/"):
            path = f"{API}/{path}"
        tok = self.token if token is _DEFAULT else token
        return self.request(method, path, body=body, headers=headers, token=tok)

    def api_ok(self, method: str, path: str, body=None, status=200, token=_DEFAULT):
        """api() asserting the status; the parsed JSON (None for an empty body)."""
        r = self.api(method, path, body=body, token=token)
        assert r.status == status, f"expected {status}: {r!r}"
        if status == 204 or not r.body:
            return None
        ct = (r.header("content-type") or "").lower()
        assert "application/json" in ct, f"{method} {path}: Content-Type {ct!r}"
        return r.json()

    # --- curl
    def curl(self, *args: str, timeout=60) -> subprocess.CompletedProcess:
        exe = shutil.which("curl")
        assert exe, "curl is not installed"
        return subprocess.run([exe, "-sS", "-k", "--max-time", "40", *args], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def curl_api(self, method: str, path: str, body=None, token=_DEFAULT,
                 extra=()) -> tuple[int, bytes]:
        """(status, body) of one API call made by curl -sk with the Bearer token."""
        if not path.startswith("/"):
            path = f"{API}/{path}"
        tok = self.token if token is _DEFAULT else token
        args = ["-X", method, "-o", "-", "-w", "\n%{http_code}"]
        if tok is not None:
            args += ["-H", f"Authorization: Bearer {tok}"]
        inp = None
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
            inp = json.dumps(body).encode() if not isinstance(body, bytes) else body
        args += [*extra, self.base_url + path]
        exe = shutil.which("curl")
        assert exe, "curl is not installed"
        p = subprocess.run([exe, "-sS", "-k", "--max-time", "40", *args], capture_output=True,
                           input=inp if inp is not None else b"", timeout=60)
        assert p.returncode == 0, f"curl {method} {path} failed ({p.returncode}): {p.stderr!r}"
        out, _, code = p.stdout.rpartition(b"\n")
        return int(code), out

    # --- convenience
    def wait_healthy(self, timeout=20):
        def ok():
            try:
                return self.get("/healthz", timeout=5).status == 200
            except OSError:
                return False
        wait_until(ok, timeout=timeout, interval=0.1,
                   what=f"GET /healthz on the console ({self.base_url})")

    def session(self, tls=True) -> "WebSession":
        return WebSession(self, tls=tls)

    def login(self, name=None, password=None, tls=True) -> "WebSession":
        s = WebSession(self, tls=tls)
        s.login(name or self.admin, password or self.password)
        return s

    def create_mailbox(self, name="journal", description="") -> dict:
        m = self.api_ok("POST", "mailboxes", {"name": name, "description": description},
                        status=201)
        assert isinstance(m.get("password"), str) and m["password"], m
        return m

    def mailbox(self, mbx_id: str) -> dict:
        return self.api_ok("GET", f"mailboxes/{mbx_id}")

    def events(self, **query) -> list[dict]:
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self.api_ok("GET", "events" + (f"?{q}" if q else ""))["events"]

    def alerts(self) -> list[dict]:
        return self.api_ok("GET", "alerts")["alerts"]

    def metrics(self, token=_DEFAULT) -> "Metrics":
        tok = self.ro_token if token is _DEFAULT else token
        r = self.request("GET", "/metrics", token=tok)
        assert r.status == 200, f"GET /metrics: {r!r}"
        return parse_metrics(r.text)

    def make_token(self, name: str, read_only=False) -> str:
        args = ["token", "create", "--name", name] + (["--read-only"] if read_only else [])
        t = self.gw.cli(*args)
        assert set(t) >= {"name", "token", "read_only"}, f"token create --json: {t!r}"
        assert t["name"] == name and t["read_only"] is read_only, t
        assert isinstance(t["token"], str) and len(t["token"]) >= 20, t
        self.tokens[name] = t
        return t["token"]

    def setup_credentials(self, admin="admin", tokens=True):
        a = self.gw.cli("admin", "add", admin)
        assert set(a) >= {"name", "password"}, f"admin add --json: {a!r}"
        assert a["name"] == admin and isinstance(a["password"], str) and len(a["password"]) >= 12, a
        self.admin, self.password = a["name"], a["password"]
        if tokens:
            self.token = self.make_token("e2e-rw")
            self.ro_token = self.make_token("e2e-ro", read_only=True)


@pytest.fixture
def console_gw(make_gw):
    """console_gw(overrides=None, admin="admin", tokens=True, start=True, imap=False,
    host="127.0.0.1", port=None) -> Console (started, credentials made, /healthz answering)."""

    def factory(overrides: dict | None = None, admin: str | None = "admin", tokens=True,
                start=True, imap=False, host="127.0.0.1", port: int | None = None) -> Console:
        ov = dict(overrides or {})
        ports = {}
        if imap:
            p, ps = free_port(), free_port()
            ov = deep_merge({"imap": {"listen": [f"127.0.0.1:{p}"],
                                      "listen_tls": [f"127.0.0.1:{ps}"]}}, ov)
            ports = {"imap": p, "imaps": ps}
        port = port or (free_port() if host == "127.0.0.1" else _free_port_on(host))
        ov = deep_merge({"console": {"listen": f"{host}:{port}"}}, ov)
        g = make_gw(ov, start=False)
        g.ports["console"] = port
        g.ports.update(ports)
        con = Console(g, host=host)
        if start:
            start_console(con, admin=admin, tokens=tokens)
        return con

    return factory


def _free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_console(con: Console, admin: str | None = "admin", tokens=True):
    con.gw.start()
    # the listener may be moved by Gateway.start on EADDRINUSE: read the config back
    listen = con.gw.config["console"]["listen"]
    con.gw.ports["console"] = int(listen.rsplit(":", 1)[1])
    con.wait_healthy()
    if admin:
        con.setup_credentials(admin, tokens=tokens)
    return con


# --------------------------------------------------------------------------- HTML


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list = []  # Node or str

    def get(self, name, default=None):
        return self.attrs.get(name, default)

    @property
    def id(self):
        return self.attrs.get("id")

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        out = []
        for c in self.children:
            out.append(c if isinstance(c, str) else c.text())
        return "".join(out)

    def text_norm(self) -> str:
        return " ".join(self.text().split())

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def select(self, selector: str) -> list["Node"]:
        return _select(self, selector)

    def one(self, selector: str) -> "Node":
        found = self.select(selector)
        assert found, f"no element matches {selector!r}"
        return found[0]

    def first(self, selector: str) -> "Node | None":
        found = self.select(selector)
        return found[0] if found else None

    def __repr__(self):
        a = " ".join(f'{k}="{v}"' for k, v in self.attrs.items())
        return f"<{self.tag} {a}>"


class Html(Node):
    """The page as an element tree (the document is the root node)."""

    def __init__(self, text: str):
        super().__init__("#document", {}, None)
        self.source = text
        _TreeBuilder(self).feed(text)


class _TreeBuilder(html.parser.HTMLParser):
    def __init__(self, root: Node):
        super().__init__(convert_charrefs=True)
        self.cur = root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        n = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.cur)
        self.cur.children.append(n)

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


_COMPOUND_RE = re.compile(r"([a-zA-Z][\w-]*|\*)?((?:#[\w-]+|\.[\w-]+|\[[^\]]+\])*)$")
_PART_RE = re.compile(r"#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:([~^$*]?=)\"?([^\"\]]*)\"?)?\]")


def _matches(n: Node, compound: str) -> bool:
    m = _COMPOUND_RE.match(compound)
    assert m, f"unsupported selector part {compound!r}"
    tag, rest = m.group(1), m.group(2)
    if tag and tag != "*" and n.tag != tag.lower():
        return False
    for p in _PART_RE.finditer(rest):
        idv, cls, attr, op, val = p.groups()
        if idv is not None and n.attrs.get("id") != idv:
            return False
        if cls is not None and cls not in n.classes:
            return False
        if attr is not None:
            if attr not in n.attrs:
                return False
            have = n.attrs[attr]
            if op == "=" and have != val:
                return False
            if op == "~=" and val not in have.split():
                return False
            if op == "^=" and not have.startswith(val):
                return False
            if op == "*=" and val not in have:
                return False
    return True


def _select(root: Node, selector: str) -> list[Node]:
    out: list[Node] = []
    for alt in selector.split(","):
        parts = alt.split()
        cands = [root]
        for i, part in enumerate(parts):
            nxt = []
            seen = set()
            for c in cands:
                for n in c.iter():
                    if id(n) not in seen and _matches(n, part):
                        seen.add(id(n))
                        nxt.append(n)
            cands = nxt
        out += [c for c in cands if c not in out]
    return out


def form_defaults(form: Node) -> list[tuple[str, str]]:
    """The fields a browser would submit for this form without user input."""
    out = []
    for n in form.iter():
        name = n.attrs.get("name")
        if not name or "disabled" in n.attrs:
            continue
        if n.tag == "input":
            typ = (n.attrs.get("type") or "text").lower()
            if typ in ("submit", "button", "image", "reset", "file"):
                continue
            if typ in ("checkbox", "radio") and "checked" not in n.attrs:
                continue
            out.append((name, n.attrs.get("value", "on" if typ in ("checkbox", "radio") else "")))
        elif n.tag == "textarea":
            out.append((name, n.text()))
        elif n.tag == "select":
            opts = [o for o in n.iter() if o.tag == "option"]
            sel = [o for o in opts if "selected" in o.attrs] or opts[:1]
            for o in sel:
                out.append((name, o.attrs.get("value", o.text())))
    return out


def csrf_of(doc: Node) -> str | None:
    for n in doc.select("input[name=csrf]"):
        if n.attrs.get("value"):
            return n.attrs["value"]
    return None


def strip_csrf(text: str) -> str:
    """The page text with every csrf value (hidden inputs, meta tags) blanked, so two renders
    can be compared."""
    text = re.sub(r'(name="?csrf"?[^>]*value=")[^"]*', r"\1", text)
    text = re.sub(r'(value=")[^"]*("[^>]*name="?csrf)', r"\1\2", text)
    return re.sub(r'(name="?csrf-token"?[^>]*content=")[^"]*', r"\1", text)


# --------------------------------------------------------------------------- sessions


def parse_set_cookie(header: str) -> tuple[str, str, dict]:
    """(name, value, {attribute (lower case): value or True})."""
    parts = [p.strip() for p in header.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        if not p:
            continue
        k, eq, v = p.partition("=")
        attrs[k.strip().lower()] = v.strip() if eq else True
    return name.strip(), value.strip().strip('"'), attrs


class WebSession:
    """A browser-like client of the HTML console: cookies and the session's CSRF token."""

    def __init__(self, con: Console, tls=True):
        self.con = con
        self.tls = tls
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []  # every Set-Cookie header received, in order
        self.csrf: str | None = None

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                form: list | dict | None = None) -> Resp:
        hdrs = dict(headers or {})
        if form is not None:
            items = list(form.items()) if isinstance(form, dict) else list(form)
            body = urllib.parse.urlencode(items).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        r = self.con.request(method, path, body=body, headers=hdrs, tls=self.tls)
        for sc in r.header_all("set-cookie"):
            self.set_cookies.append(sc)
            name, value, attrs = parse_set_cookie(sc)
            gone = value == "" or attrs.get("max-age") in ("0", "-1")
            if not gone and isinstance(attrs.get("expires"), str):
                with contextlib.suppress(Exception):
                    exp = email.utils.parsedate_to_datetime(attrs["expires"])
                    gone = exp < now_utc()
            if gone:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        if "text/html" in (r.header("content-type") or "") and r.body:
            tok = csrf_of(Html(r.text))
            if tok:
                self.csrf = tok
        return r

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def follow(self, r: Resp) -> Resp:
        """GET the Location of a redirect (as a path: the host part is ours)."""
        loc = r.header("location")
        assert loc, f"not a redirect: {r!r}"
        u = urllib.parse.urlsplit(urllib.parse.urljoin(r.path or "/", loc))
        return self.get(u.path + (f"?{u.query}" if u.query else ""))

    def page(self, path: str) -> tuple[Resp, Html]:
        r = self.get(path)
        assert r.status == 200, f"GET {path}: {r!r}"
        assert "text/html" in (r.header("content-type") or ""), \
            f"GET {path}: Content-Type {r.header('content-type')!r}"
        return r, Html(r.text)

    def post_form(self, path: str, fields: dict | list, csrf=True) -> Resp:
        items = list(fields.items()) if isinstance(fields, dict) else list(fields)
        if csrf and self.csrf and not any(k == "csrf" for k, _ in items):
            items.append(("csrf", self.csrf))
        return self.request("POST", path, form=items)

    def submit(self, page_path: str, form_selector: str, fields: dict | None = None,
               csrf=True) -> Resp:
        """GET page_path, fill the form (its defaults, hidden csrf included, overridden by
        `fields`; a field set to None is left out) and POST it to its action."""
        _, doc = self.page(page_path)
        form = doc.first(form_selector)
        assert form is not None, f"{page_path}: no {form_selector}\n{doc.source[:3000]}"
        items = dict(form_defaults(form))
        for k, v in (fields or {}).items():
            if v is None:
                items.pop(k, None)
            else:
                items[k] = v
        if not csrf:
            items.pop("csrf", None)
        action = form.get("action") or page_path
        action = urllib.parse.urljoin(page_path, action)
        method = (form.get("method") or "post").upper()
        assert method == "POST", f"{form_selector} on {page_path} has method {method}"
        return self.request("POST", action, form=list(items.items()))

    def login(self, name: str, password: str, expect_ok=True) -> Resp:
        r = self.get("/login")
        assert r.status == 200, f"GET /login: {r!r}"
        doc = Html(r.text)
        form = doc.first("form#login-form")
        assert form is not None, f"/login has no form#login-form\n{r.text[:3000]}"
        items = dict(form_defaults(form))
        items.update(name=name, password=password)
        action = urllib.parse.urljoin("/login", form.get("action") or "/login")
        r = self.request("POST", action, form=list(items.items()))
        if expect_ok:
            assert r.status in (302, 303), f"login as {name}: expected a redirect, got {r!r}"
            assert r.location_path == "/", f"login redirects to {r.header('location')!r}, not /"
            assert "jg_session" in self.cookies, \
                f"no jg_session cookie after login: {r.header_all('set-cookie')}"
            home = self.get("/")
            assert home.status == 200, f"GET / after login: {home!r}"
            assert self.csrf, "the dashboard carries no csrf field (form#logout should)"
        return r

    def api(self, method: str, path: str, body=None, csrf=True) -> Resp:
        if not path.startswith("/"):
            path = f"{API}/{path}"
        hdrs = {}
        if csrf and method not in ("GET", "HEAD") and self.csrf:
            hdrs["X-CSRF-Token"] = self.csrf
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return self.request(method, path, body=body, headers=hdrs)

    def logout(self) -> Resp:
        return self.post_form("/logout", {})


def assert_redirect_to_login(r: Resp):
    assert r.status in (302, 303, 307), f"expected a redirect to /login, got {r!r}"
    assert r.location_path == "/login", f"redirects to {r.header('location')!r}, not /login"


# --------------------------------------------------------------------------- webhook receiver


class WebhookReceiver:
    """http.server on loopback in a thread; every POST body is recorded (parsed as JSON)."""

    def __init__(self, status=200):
        self.hooks: list[dict] = []  # {"path", "headers", "body", "json"}
        self.cond = threading.Condition()
        self.status = status
        recv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if not n and "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                    body = self._read_chunked()
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                with recv.cond:
                    recv.hooks.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body, "json": parsed, "time": time.time()})
                    recv.cond.notify_all()
                out = b"{}"
                self.send_response(recv.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def _read_chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list:
        with self.cond:
            return [h["json"] for h in self.hooks]

    def wait_for(self, pred, timeout=30, what="a webhook call") -> dict:
        """The first recorded JSON body for which pred(body) is true (waiting for it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for h in self.hooks:
                    if h["json"] is not None and pred(h["json"]):
                        return h["json"]
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [h["json"] if h["json"] is not None else h["body"][:200]
                           for h in self.hooks]
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"received: {got!r}")
                self.cond.wait(min(left, 0.5))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- SMTP sink


class SinkMessage:
    def __init__(self, mail_from: str, rcpts: list[str], data: bytes):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data
        self.msg = email.message_from_bytes(data, policy=email.policy.default)

    @property
    def subject(self) -> str:
        return str(self.msg.get("Subject", ""))

    def body_text(self) -> str:
        part = self.msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return self.data.decode("utf-8", "replace")
        try:
            return part.get_content()
        except Exception:
            return self.data.decode("utf-8", "replace")

    def __repr__(self):
        return f"<mail from {self.mail_from} to {self.rcpts} subject {self.subject!r}>"


class SmtpSink:
    """A plain SMTP server on loopback (ESMTP: 8BITMIME, SMTPUTF8, PIPELINING, SIZE; no
    STARTTLS, no AUTH) that records every message."""

    def __init__(self):
        self.messages: list[SinkMessage] = []
        self.sessions = 0
        self.cond = threading.Condition()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 60

            def reply(self, line: str):
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self):
                with sink.cond:
                    sink.sessions += 1
                self.reply("220 sink.test ESMTP e2e sink")
                mail_from, rcpts = None, []
                while True:
                    line = self.rfile.readline(65536)
                    if not line:
                        return
                    cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                                         b"250-PIPELINING\r\n250 SIZE 52428800\r\n")
                        self.wfile.flush()
                    elif verb == "HELO":
                        self.reply("250 sink.test")
                    elif verb == "MAIL":
                        m = re.match(r"(?i)MAIL FROM:\s*<([^>]*)>", cmd)
                        if not m:
                            self.reply("501 5.5.4 syntax")
                            continue
                        mail_from, rcpts = m.group(1), []
                        self.reply("250 2.1.0 ok")
                    elif verb == "RCPT":
                        m = re.match(r"(?i)RCPT TO:\s*<([^>]*)>", cmd)
                        if not m or mail_from is None:
                            self.reply("503 5.5.1 sequence" if m else "501 5.5.4 syntax")
                            continue
                        rcpts.append(m.group(1))
                        self.reply("250 2.1.5 ok")
                    elif verb == "DATA":
                        if mail_from is None or not rcpts:
                            self.reply("503 5.5.1 sequence")
                            continue
                        self.reply("354 go ahead")
                        data = bytearray()
                        while True:
                            ln = self.rfile.readline(1 << 20)
                            if not ln:
                                return
                            if ln in (b".\r\n", b".\n"):
                                break
                            if ln.startswith(b"."):
                                ln = ln[1:]
                            data += ln
                        with sink.cond:
                            sink.messages.append(SinkMessage(mail_from, rcpts, bytes(data)))
                            sink.cond.notify_all()
                        mail_from, rcpts = None, []
                        self.reply("250 2.0.0 queued")
                    elif verb == "RSET":
                        mail_from, rcpts = None, []
                        self.reply("250 2.0.0 ok")
                    elif verb == "NOOP":
                        self.reply("250 2.0.0 ok")
                    elif verb == "QUIT":
                        self.reply("221 2.0.0 bye")
                        return
                    else:
                        self.reply("502 5.5.2 not implemented")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def all(self) -> list[SinkMessage]:
        with self.cond:
            return list(self.messages)

    def wait_for(self, pred, timeout=30, what="an e-mail") -> SinkMessage:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"received: {self.messages!r}")
                self.cond.wait(min(left, 0.5))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    w = WebhookReceiver()
    yield w
    w.close()


@pytest.fixture
def smtp_sink():
    s = SmtpSink()
    yield s
    s.close()


def alerts_section(webhook: WebhookReceiver | None = None, sink: SmtpSink | None = None,
                   **kw) -> dict:
    """An [alerts] section with every check off (0) unless given in kw, check_interval_secs 1,
    and the webhook / e-mail channels pointed at our receivers."""
    sec = {"check_interval_secs": 1, "resend_hours": 24.0, "silence_hours": 0.0,
           "uncollected_hours": 0.0, "cert_days": 0, "disk_free_bytes": 0,
           "archive_backlog": 0, "login_failures_per_hour": 0, "tls_failures_per_hour": 0}
    if webhook is not None:
        sec["webhook_url"] = webhook.url
    if sink is not None:
        sec.update(email_to=["ops@example.test"], email_from=f"journalgate@{HOSTNAME}",
                   smtp_relay=sink.addr, smtp_tls="none")
    sec.update(kw)
    return sec


# --------------------------------------------------------------------------- metrics


class Sample:
    __slots__ = ("name", "labels", "value")

    def __init__(self, name, labels, value):
        self.name, self.labels, self.value = name, labels, value

    def __repr__(self):
        return f"{self.name}{self.labels} {self.value}"


class Metrics:
    def __init__(self, text: str, samples: list[Sample], types: dict[str, str],
                 helps: dict[str, str]):
        self.text = text
        self.samples = samples
        self.types = types
        self.helps = helps

    def find(self, name: str, **labels) -> list[Sample]:
        return [s for s in self.samples if s.name == name
                and all(s.labels.get(k) == v for k, v in labels.items())]

    def get(self, name: str, **labels) -> float | None:
        f = self.find(name, **labels)
        assert len(f) <= 1, f"{name}{labels} matches several samples: {f}"
        return f[0].value if f else None

    def sum(self, name: str, **labels) -> float:
        return sum(s.value for s in self.find(name, **labels))

    def mailbox(self, name: str, mbx: dict) -> float | None:
        """The sample of `name` for this mailbox: label mailbox = its id (or, tolerated, its
        address or name)."""
        keys = [mbx["id"], mbx.get("address"), mbx.get("name")]
        for k in keys:
            if k:
                f = self.find(name, mailbox=k)
                if f:
                    assert len(f) == 1, f
                    return f[0].value
        return None

    def families(self) -> set[str]:
        return set(self.types)

    def has_family(self, fam: str) -> bool:
        return fam in self.types or any(s.name == fam or s.name.startswith(fam + "_")
                                        for s in self.samples)


_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?\s*$")


def _unescape_label(v: str) -> str:
    return v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_metrics(text: str) -> Metrics:
    """Strict parse of the Prometheus text exposition format 0.0.4."""
    samples, types, helps = [], {}, {}
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                assert parts[2] not in types, f"line {i}: second TYPE for {parts[2]}"
                assert len(parts) == 4 and parts[3] in (
                    "counter", "gauge", "histogram", "summary", "untyped"), f"line {i}: {line!r}"
                types[parts[2]] = parts[3]
            elif len(parts) >= 3 and parts[1] == "HELP":
                helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"metrics line {i} is not a sample: {line!r}"
        labels = {}
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL_RE.match(body, pos)
            assert lm, f"metrics line {i}: bad labels {body!r}"
            labels[lm.group(1)] = _unescape_label(lm.group(2))
            pos = lm.end()
        raw = m.group(4)
        try:
            value = float(raw.replace("Inf", "inf").replace("NaN", "nan"))
        except ValueError:
            raise AssertionError(f"metrics line {i}: bad value {raw!r}") from None
        samples.append(Sample(m.group(1), labels, value))
    return Metrics(text, samples, types, helps)


# --------------------------------------------------------------------------- Prometheus


class Prometheus:
    """Our own prometheus server: own config, data dir and loopback port; killed in stop().

    `jobs` maps a scrape job name to the Bearer token it sends (None: no Authorization); by
    default one job "journalgate" with `token`. Every job scrapes `target` over HTTPS without
    verifying the certificate."""

    def __init__(self, base: Path, target: str, token: str | None = None, interval="1s",
                 scheme="https", jobs: dict[str, str | None] | None = None):
        self.dir = Path(base)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.exe = require_tool("prometheus")["prometheus"]
        self.target = target
        self.jobs = jobs if jobs is not None else {"journalgate": token}
        self.interval = interval
        self.scheme = scheme
        self.proc: subprocess.Popen | None = None
        self.port = None
        self.log_path = self.dir / "prometheus.log"

    def write_config(self) -> Path:
        lines = [
            "global:",
            f"  scrape_interval: {self.interval}",
            f"  scrape_timeout: {self.interval}",
            f"  evaluation_interval: {self.interval}",
            "scrape_configs:",
        ]
        for job, token in self.jobs.items():
            lines += [f"  - job_name: {job}", f"    scheme: {self.scheme}",
                      "    metrics_path: /metrics"]
            if token:
                tf = self.dir / f"token-{job}"
                tf.write_text(token)
                tf.chmod(0o600)
                lines += ["    authorization:", "      type: Bearer",
                          f"      credentials_file: {tf}"]
            if self.scheme == "https":
                lines += ["    tls_config:", "      insecure_skip_verify: true"]
            lines += ["    static_configs:", f"      - targets: ['{self.target}']"]
        cfg = self.dir / "prometheus.yml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, timeout=60):
        cfg = self.write_config()
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 0, f"promtool check config:\n{p.stdout}\n{p.stderr}"
        for attempt in range(3):
            self.port = free_port()
            data = self.dir / f"data{attempt}"
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
            log.close()
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    if "address already in use" in self.log().lower() and attempt < 2:
                        break
                    raise AssertionError(f"prometheus exited with {self.proc.returncode}\n"
                                         f"{self.log()[-4000:]}")
                try:
                    if "ready" in self._get("/-/ready", timeout=2).lower():
                        return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"prometheus not ready after {timeout}s\n"
                                         f"{self.log()[-4000:]}")
                time.sleep(0.2)
        raise AssertionError("prometheus: ports kept being taken")

    def _get(self, path: str, timeout=10) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return r.read().decode()

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        j = json.loads(self._get(f"/api/v1/{path}" + (f"?{q}" if q else "")))
        assert j.get("status") == "success", j
        return j["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def targets(self, job: str | None = None) -> list[dict]:
        ts = self.api("targets")["activeTargets"]
        return [t for t in ts if job is None or t.get("labels", {}).get("job") == job]

    def wait_target(self, job="journalgate", health="up", timeout=60) -> dict:
        last = []

        def reached():
            nonlocal last
            last = self.targets(job)
            for t in last:
                if t.get("health") == health:
                    return t
            return None
        try:
            return wait_until(reached, timeout=timeout, interval=0.5,
                              what=f"scrape target of job {job} {health}")
        except AssertionError as e:
            raise AssertionError(f"{e}; targets: {json.dumps(last, indent=1)}") from None

    def wait_target_up(self, job="journalgate", timeout=60) -> dict:
        return self.wait_target(job, "up", timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def prometheus(tmp_path, request):
    """prometheus(target="127.0.0.1:PORT", token=...) -> a started Prometheus (stopped after
    the test; its log printed when the test failed)."""
    started: list[Prometheus] = []

    def factory(target: str, token: str | None = None, interval="1s",
                jobs: dict | None = None) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus{len(started)}", target, token, interval,
                       jobs=jobs)
        started.append(p)
        return p.start()

    yield factory
    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    for p in started:
        p.stop()
        if failed:
            print(f"\n##### prometheus log {p.dir}\n{p.log()[-6000:]}")


# --------------------------------------------------------------------------- browser


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1280,1024"]


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:120] or "test"


class Browser:
    """A selenium Chrome driver plus screenshot bookkeeping and a few waits."""

    def __init__(self, driver, shots: Path, copy_to: Path | None):
        self.driver = driver
        self.shots = shots
        self.copy_to = copy_to
        self.n = 0

    def shot(self, name: str) -> Path:
        self.n += 1
        p = self.shots / f"{self.n:02d}-{_safe_name(name)}.png"
        self.shots.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(p)), f"screenshot {p} failed"
        if self.copy_to is not None:
            with contextlib.suppress(OSError):
                self.copy_to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, self.copy_to / p.name)
        return p

    def get(self, url: str):
        self.driver.get(url)

    def css(self, sel: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, sel)

    def css_all(self, sel: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, sel)

    def wait(self, pred, timeout=20, what="a condition"):
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
                lambda d: pred(d))
        except Exception as e:
            raise AssertionError(f"browser: timed out after {timeout}s waiting for {what} "
                                 f"(at {self.driver.current_url}): {e!r}") from None

    def wait_css(self, sel: str, timeout=20):
        from selenium.common.exceptions import NoSuchElementException

        def found(d):
            try:
                return self.css(sel)
            except NoSuchElementException:
                return False
        return self.wait(found, timeout=timeout, what=f"element {sel}")

    def path(self) -> str:
        return urllib.parse.urlsplit(self.driver.current_url).path

    def source(self) -> str:
        return self.driver.page_source

    def fill(self, form_sel: str, **fields):
        """Type into the named fields of a form (clearing them first)."""
        for name, value in fields.items():
            el = self.css(f"{form_sel} [name={name}]")
            el.clear()
            el.send_keys(value)

    def submit_button(self, form_sel: str):
        """The form's submit button (a <button> without a type is one), or None."""
        found = self.css_all(f"{form_sel} [type=submit], {form_sel} button:not([type])")
        return found[0] if found else None

    def _wait_navigation(self, old, what: str):
        def navigated(d):
            try:
                old.tag_name  # raises once the old document is gone
                return False
            except Exception:
                return d.execute_script("return document.readyState") == "complete"
        self.wait(navigated, timeout=60, what=what)

    def click_and_wait(self, el, what="the next page"):
        """Click an element that submits or navigates; wait for the next page."""
        old = self.css("html")
        el.click()
        self._wait_navigation(old, what)

    def submit(self, form_sel: str):
        """Press the form's submit button (or requestSubmit() the form when it has none, so
        the browser's own validation still runs) and wait for the next page to load."""
        old = self.css("html")
        btn = self.submit_button(form_sel)
        if btn is not None:
            btn.click()
        else:
            self.driver.execute_script("arguments[0].requestSubmit()", self.css(form_sel))
        self._wait_navigation(old, f"the page after submitting {form_sel}")

    def set_field(self, el, value: str):
        """Set a form control the way a user would (select, radio/checkbox, text); a hidden
        input is set through JavaScript."""
        from selenium.webdriver.support.ui import Select
        typ = (el.get_attribute("type") or "").lower()
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        elif typ in ("radio", "checkbox"):
            if not el.is_selected():
                el.click()
        elif typ == "hidden" or not el.is_displayed():
            self.driver.execute_script("arguments[0].value = arguments[1]", el, value)
        else:
            el.clear()
            el.send_keys(value)

    def login(self, con: Console, name=None, password=None):
        self.get(con.base_url + "/login")
        self.wait_css("form#login-form")
        self.fill("form#login-form", name=name or con.admin, password=password or con.password)
        self.submit("form#login-form")
        assert self.path() == "/", f"after login the browser is at {self.driver.current_url}"
        self.wait_css("table#mailboxes")


@pytest.fixture
def browser(tmp_path, request):
    tools = require_tool("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager: no usage statistics
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    opts = Options()
    opts.binary_location = tools["chromium"]
    for a in CHROMIUM_ARGS:
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.accept_insecure_certs = True
    service = Service(executable_path=tools["chromedriver"],
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    out = os.environ.get("JG_TEST_OUTPUT")
    name = _safe_name(request.node.name)
    b = Browser(driver, tmp_path / "screenshots", Path(out) / name if out else None)
    try:
        yield b
    finally:
        failed = any(getattr(request.node, f"rep_{w}", None) is not None
                     and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
        if failed:
            with contextlib.suppress(Exception):
                p = b.shot("failure")
                print(f"\n##### failure screenshot: {p} (page {driver.current_url})")
        with contextlib.suppress(Exception):
            driver.quit()
        print(f"\nscreenshots: {b.shots}" + (f" (copied to {b.copy_to})" if b.copy_to else ""))
