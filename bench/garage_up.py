"""Starts a 3-node Garage cluster on loopback for bench/cluster.sh (the same set-up as the
cluster tests: tests/e2e/garageharness.py) and prints one JSON line: the S3 endpoints, the
access key ID, the secret key's file and the node processes' pids. The nodes keep running
after this exits; the caller stops them (kill the pids).

    python3 bench/garage_up.py DIR
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from garageharness import Garage  # noqa: E402


def main() -> None:
    base = Path(sys.argv[1])
    base.mkdir(parents=True, exist_ok=True)
    g = Garage(base).start()
    print(json.dumps({
        "endpoints": [g.endpoint(i) for i in range(len(g.nodes))],
        "bucket": g.bucket,
        "key_id": g.key_id,
        "secret_file": str(base / "s3-secret"),
        "pids": [n["proc"].pid for n in g.nodes],
    }))


if __name__ == "__main__":
    main()
