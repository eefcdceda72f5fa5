"""The head's GCS lost and restarted in the middle of a stream of events, with Ray's GCS fault
tolerance on the box's Redis (issue 13, item 4; docs/deploy.md, "Node failures"): on a
3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1, Tallyray with 4 shards on the worker
nodes, four producers posting events over HTTP; the head's GCS process is killed (SIGKILL)
when a third of the stream is acknowledged, left down for a few seconds, and started again on
the same port. What docs/deploy.md says survives, shown:

    while the GCS is down    the API answers, events are acknowledged (the replicas reach
                             the shards over lines and existing actor handles)
    afterwards               every acknowledged event counted once; the named shards found
                             again, on the same nodes; a new actor can be created

The GCS keeps its tables in Redis (``RAY_REDIS_ADDRESS``, 127.0.0.1:6379 unless
``TALLYRAY_TEST_REDIS`` says otherwise) under a key namespace of this test's own, removed
afterwards: nothing else in that Redis is touched. Without a Redis there, the test is
skipped. The cluster runs in a process of its own (``head_restart_child.py``). The database
is a temporary SQLite file even where the suite has PostgreSQL: what is tested is Ray's
control plane, and a PostgreSQL database of its own added ~20 s to the test
(test_node_failure.py covers a lost node on PostgreSQL).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
from cluster_support import run_json_child

pytestmark = pytest.mark.e2e

CHILD = Path(__file__).with_name("head_restart_child.py")
REDIS = os.environ.get("TALLYRAY_TEST_REDIS", "127.0.0.1:6379")
EVENTS_PER_PRODUCER = 100
DOWN_SECONDS = 3


def redis_command(*words: str) -> bytes:
    """One command to the Redis at :data:`REDIS`, its raw answer (RESP)."""
    host, _, port = REDIS.rpartition(":")
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request.encode())
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def keys_of(namespace: str) -> int:
    """How many keys of Redis name ``namespace`` (``KEYS``' answer is ``*<count>``...)."""
    return int(redis_command("KEYS", f"*{namespace}*").split(b"\r\n", 1)[0][1:])


def run_child(database_url: str, namespace: str, cwd: Path) -> dict[str, object]:
    argv = [database_url, str(EVENTS_PER_PRODUCER), str(DOWN_SECONDS), REDIS, namespace]
    result: dict[str, object] = run_json_child(CHILD, argv, cwd)
    return result


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    try:
        assert redis_command("PING") == b"+PONG\r\n"
    except OSError as error:
        pytest.skip(f"no Redis at {REDIS} for the GCS's tables: {error}")
    workdir = tmp_path_factory.mktemp("head-restart")
    namespace = "tallyray_test_" + uuid.uuid4().hex[:12]
    try:
        result = run_child(f"sqlite:///{workdir}/tallyray.db", namespace, workdir)
    finally:
        left = keys_of(namespace)
        if left:  # the child did not get to remove them
            from ray._private.gcs_utils import cleanup_redis_storage

            host, _, port = REDIS.rpartition(":")
            cleanup_redis_storage(host, int(port), "", False, namespace)
    print(
        f"\nGCS down {result['gcs_down_s']} s after {result['acknowledged_before_kill']} of "
        f"{result['events']} events: {result['acknowledged_while_gcs_down']} acknowledged "
        f"while down, {result['unacknowledged_attempts_while_down']} refused"
    )
    result["redis_keys_left"] = left
    return result


def test_while_the_gcs_is_down_the_api_answers_and_events_are_acknowledged(
    outcome: dict[str, object],
) -> None:
    assert outcome["healthz_while_down"] == [200]
    assert int(str(outcome["acknowledged_while_gcs_down"])) > 0


def test_every_acknowledged_event_is_counted_once(outcome: dict[str, object]) -> None:
    assert outcome["acknowledged"] == outcome["events"]
    assert outcome["mismatches"] == {}
    assert outcome["totals_match"] is True


def test_after_the_restart_the_shards_are_found_where_they_were_and_actors_can_be_made(
    outcome: dict[str, object],
) -> None:
    assert outcome["named_shards_found_after_restart"] == 4
    assert outcome["shard_nodes_unchanged"] is True
    assert outcome["new_actor_after_restart"] is True


def test_the_gcs_tables_are_removed_from_redis_afterwards(outcome: dict[str, object]) -> None:
    assert outcome["redis_keys_left"] == 0
