"""An account set aside (tallyray/errors.py AccountQuarantined, tallyray/metrics.py): what its
requests are told, and how shards report how many there are."""

from __future__ import annotations

import pickle

import pytest

from tallyray.errors import AccountQuarantined, StoreUnavailable
from tallyray.metrics import Metrics


def test_the_answer_says_what_happened_and_that_it_is_not_the_callers_fault() -> None:
    error = AccountQuarantined.of("acme")
    assert isinstance(error, StoreUnavailable)
    assert (error.http_status, error.retry_after_seconds) == (503, 60)
    assert StoreUnavailable("down").retry_after_seconds == 1
    body = error.to_json()["error"]
    assert isinstance(body, dict)
    assert body["type"] == "account_quarantined"
    assert body["message"] == (
        "the account of customer 'acme' is set aside after an error applying its stored "
        "data; the operator has been alerted. This is not a problem with your request, and "
        "nothing of it was stored for this customer: retry later. Data stored before is "
        "kept and counts again once the account is repaired."
    )


def test_it_crosses_a_process_boundary_as_itself() -> None:
    error = pickle.loads(pickle.dumps(AccountQuarantined.of("acme")))
    assert type(error) is AccountQuarantined
    assert "'acme'" in error.message


def status(shard: int, quarantined: int | None) -> dict[str, object]:
    found: dict[str, object] = {
        "shard": shard,
        "position": 10,
        "accounts": 3,
        "commit_seconds": [],
        "batch_sizes": [],
        "checkpoint_age_seconds": None,
    }
    if quarantined is not None:
        found["quarantined"] = quarantined
    return found


@pytest.mark.parametrize(
    ("statuses", "shown"),
    [
        ([status(0, 1), status(1, 0)], {"0": 1.0, "1": 0.0}),
        ([status(0, 2)], {"0": 2.0}),
        ([status(0, None)], {"0": 0.0}),  # a shard of an older version says nothing
    ],
)
def test_the_gauge_counts_accounts_set_aside_per_shard(
    statuses: list[dict[str, object]], shown: dict[str, float]
) -> None:
    metrics = Metrics()
    metrics.absorb_shards(statuses)
    text = metrics.render().decode()
    for shard, value in shown.items():
        assert f'tallyray_quarantined_accounts{{shard="{shard}"}} {value}' in text
