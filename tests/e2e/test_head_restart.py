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
``TALLYRAY_TEST_REDIS`` says otherwise) under a key namespace of this run's own, removed
afterwards: nothing else in that Redis is touched. Without a Redis there, the test is
skipped. The cluster is test_node_failure.py's (``cluster_failures`` in cluster_support.py, one
cluster start for both): the GCS is restarted after that test's worker node was lost and its
shards came back on the other worker; the stream's events are of ids of their own, and the
totals checked count both streams.
"""

from __future__ import annotations

import pytest
from cluster_support import REDIS, cluster_failures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    failures = cluster_failures(tmp_path_factory)
    result = failures["head_restart"]
    if result is None:
        pytest.skip(f"no Redis at {REDIS} for the GCS's tables")
    assert isinstance(result, dict)
    print(
        f"\nGCS down {result['gcs_down_s']} s after {result['acknowledged_before_kill']} of "
        f"{result['events']} events: {result['acknowledged_while_gcs_down']} acknowledged "
        f"while down, {result['unacknowledged_attempts_while_down']} refused"
    )
    return {**result, "redis_keys_left": failures["redis_keys_left"]}


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
