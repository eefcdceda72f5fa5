"""The head's GCS killed and restarted under a stream of events, with GCS fault tolerance on
an external Redis (issue 13, item 4; docs/deploy.md, "Node failures"): runs
tests/e2e/head_restart_child.py — a 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 whose
GCS keeps its tables in Redis under a key namespace of its own (removed at the end), Tallyray
with 4 shards on it, four producers over HTTP, the head's GCS process killed with SIGKILL a
third of the way through, left down ``--down`` seconds and started again — and prints its
JSON line.

    .venv/bin/python bench/bench_head_restart.py [--redis 127.0.0.1:6379] [--down 10]
        [--database-url URL] [--per-producer 400]

Without ``--database-url``, a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

CHILD = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "head_restart_child.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--down", type=float, default=10.0)
    parser.add_argument("--database-url")
    parser.add_argument("--per-producer", type=int, default=400)
    args = parser.parse_args()
    namespace = "tallyray_bench_" + uuid.uuid4().hex[:12]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLYRAY_", "RAY_"))}
    with tempfile.TemporaryDirectory(prefix="tallyray-head-") as workdir:
        url = args.database_url or f"sqlite:///{workdir}/tallyray.db"
        argv = [url, str(args.per_producer), str(args.down), args.redis, namespace]
        child = subprocess.run(
            [sys.executable, str(CHILD), *argv],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if child.returncode != 0:
        sys.exit(child.stderr[-4000:])
    print(child.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
