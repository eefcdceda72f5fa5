"""Time to recovery after a worker node is lost (issue 13, item 4): runs
tests/e2e/node_failure_child.py — a 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1,
Tallyray with 4 shards, four producers over HTTP, the worker node holding the most shards
killed with SIGKILL a third of the way through — and prints its JSON line for each run.

    .venv/bin/python bench/bench_node_failure.py [--runs 3] [--database-url URL]
        [--per-producer 500]

Ray's settings in the environment reach the cluster's processes: how fast the GCS declares
a node dead is ``RAY_health_check_period_ms`` (3,000 by default) times
``RAY_health_check_failure_threshold`` (5), give or take ``RAY_health_check_timeout_ms``, e.g.
    RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=3 \\
      .venv/bin/python bench/bench_node_failure.py
Without ``--database-url``, each run has a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "node_failure_child.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url")
    parser.add_argument("--per-producer", type=int, default=500)
    args = parser.parse_args()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tallyray-node-") as workdir:
            url = args.database_url or f"sqlite:///{workdir}/tallyray.db"
            child = subprocess.run(
                [sys.executable, str(CHILD), url, str(args.per_producer)],
                cwd=workdir, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                raise SystemExit(child.returncode)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
