"""A 3-node Garage cluster on loopback (replication factor 3, sqlite metadata), for the
cluster tests and bench/cluster.sh: start(), bucket and key made, kill_node()/start_node()
for fault tests, stop(). Needs the `garage` binary (the README's test command installs it
when missing)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from jgharness import free_port, wait_until

GARAGE = shutil.which("garage") or os.path.expanduser("~/.cargo/bin/garage")


def available() -> bool:
    return os.path.exists(GARAGE)


class Garage:
    def __init__(self, base: Path, nodes: int = 3):
        self.base = base
        self.secret = secrets.token_hex(32)
        self.nodes = []
        for i in range(nodes):
            d = base / f"garage{i}"
            (d / "meta").mkdir(parents=True, exist_ok=True)
            (d / "data").mkdir(parents=True, exist_ok=True)
            n = {"dir": d, "rpc": free_port(), "s3": free_port(), "admin": free_port(), "proc": None}
            n["conf"] = d / "garage.toml"
            n["conf"].write_text(
                f'metadata_dir = "{d}/meta"\n'
                f'data_dir = "{d}/data"\n'
                'db_engine = "sqlite"\n'
                # Durable like a production cluster: a write is acknowledged once the
                # replicas of its quorum have synced it.
                'metadata_fsync = true\ndata_fsync = true\n'
                # What journalgate stores is sealed: compressing it only costs CPU.
                'compression_level = "none"\n'
                'replication_factor = 3\n'
                f'rpc_bind_addr = "127.0.0.1:{n["rpc"]}"\n'
                f'rpc_public_addr = "127.0.0.1:{n["rpc"]}"\n'
                f'rpc_secret = "{self.secret}"\n'
                '[s3_api]\ns3_region = "garage"\n'
                f'api_bind_addr = "127.0.0.1:{n["s3"]}"\n'
                'root_domain = ".s3.garage.localhost"\n'
                f'[admin]\napi_bind_addr = "127.0.0.1:{n["admin"]}"\n'
            )
            self.nodes.append(n)
        self.key_id = ""
        self.secret_key = ""
        self.bucket = "journalgate"

    def cli(self, *args, node=0, check=True) -> str:
        p = subprocess.run([GARAGE, "-c", str(self.nodes[node]["conf"]), *args],
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"garage {' '.join(args)}: {p.stderr}{p.stdout}")
        return p.stdout + p.stderr

    def start_node(self, i: int):
        n = self.nodes[i]
        log = open(n["dir"] / "garage.log", "ab")
        n["proc"] = subprocess.Popen([GARAGE, "-c", str(n["conf"]), "server"], stdout=log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "garage=warn"})

    def kill_node(self, i: int):
        p = self.nodes[i]["proc"]
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def endpoint(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.nodes[i]['s3']}"

    def start(self):
        for i in range(len(self.nodes)):
            self.start_node(i)
        ids = []
        for i in range(len(self.nodes)):
            out = wait_until(lambda i=i: self._node_id(i), timeout=30, what=f"garage node {i} id")
            ids.append(out)
        for other in ids[1:]:
            self.cli("node", "connect", other)
        wait_until(lambda: self.cli("status").count("127.0.0.1:") >= len(self.nodes),
                   timeout=30, what="garage nodes see each other")
        for nid in ids:
            self.cli("layout", "assign", "-z", "dc1", "-c", "1G", nid.split("@")[0][:16])
        self.cli("layout", "apply", "--version", "1")
        out = self.cli("key", "create", "journalgate")
        self.key_id = re.search(r"Key ID:\s*(\S+)", out).group(1)
        self.secret_key = re.search(r"Secret key:\s*(\S+)", out).group(1)
        self.cli("bucket", "create", self.bucket)
        self.cli("bucket", "allow", "--read", "--write", "--owner", self.bucket, "--key", "journalgate")
        (self.base / "s3-secret").write_text(self.secret_key + "\n")
        os.chmod(self.base / "s3-secret", 0o600)
        return self

    def _node_id(self, i: int) -> str | None:
        p = subprocess.run([GARAGE, "-c", str(self.nodes[i]["conf"]), "node", "id", "-q"],
                           capture_output=True, text=True, timeout=30)
        out = p.stdout.strip()
        return out if p.returncode == 0 and "@" in out else None

    def new_bucket(self, name: str) -> str:
        """Another bucket for the same key (a test that needs a store of its own)."""
        self.cli("bucket", "create", name)
        self.cli("bucket", "allow", "--read", "--write", "--owner", name, "--key", "journalgate")
        return name

    def storage_config(self, node_id: str, endpoint_node: int = 0, bucket: str | None = None) -> dict:
        return {
            "storage": {
                "backend": "s3", "endpoint": self.endpoint(endpoint_node), "region": "garage",
                "bucket": bucket or self.bucket, "access_key_id": self.key_id,
                "secret_access_key_file": str(self.base / "s3-secret"), "node_id": node_id,
                "request_timeout_secs": 5,
            },
            # Every node of a cluster seals archive copies to the same intake key.
            "archive": {"intake_key_file": str(self.base / "intake.key")},
        }

    def stop(self):
        for n in self.nodes:
            p = n["proc"]
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
