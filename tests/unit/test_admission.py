"""How the ingress sends a request's events to their shards (tallyray/serve/admission.py): a
shard names refused events by their index in its part, the ingress by their index in the
request; a request spanning shards is put to them first unless their room covers it."""

from __future__ import annotations

import pytest

from tallyray.errors import Problem
from tallyray.serve.admission import ROOM_SECONDS, Rooms, _renumbered


@pytest.mark.parametrize(
    ("where", "shown"),
    [
        ("[0]", "[3]"),  # the shard's part holds the request's events 3, 5 and 8
        ("[2]", "[8]"),
        ("[7]", "[7]"),  # not in the part: left as it was
        ("customer_id", "customer_id"),  # not an index
    ],
)
def test_problems_are_named_by_their_index_in_the_request(where: str, shown: str) -> None:
    (problem,) = _renumbered([Problem(where, "too many groups")], [3, 5, 8])
    assert problem == Problem(shown, "too many groups")


# -- the room a shard reports -----------------------------------------------------------------
# A shard's room: how many events a request may send it without any account passing a cap.
# The ingress trusts the latest report (by log position) for ROOM_SECONDS, less what it has in
# flight to the shard.


@pytest.mark.parametrize(
    ("reports", "in_flight", "events", "age", "fits"),
    [
        ([(10, 500)], 0, 500, 0.0, True),
        ([(10, 500)], 0, 501, 0.0, False),
        ([(10, 500)], 200, 301, 0.0, False),  # 301 + 200 in flight > 500
        ([(10, 500)], 0, 1, ROOM_SECONDS + 0.1, False),  # too old: ask
        ([(12, 100), (10, 500)], 0, 200, 0.0, False),  # an older report arriving late is ignored
        ([(10, 100), (12, 500)], 0, 200, 0.0, True),
        ([], 0, 1, 0.0, False),  # nothing known yet: ask
    ],
)
def test_a_request_is_sent_without_asking_only_while_the_room_covers_it(
    reports: list[tuple[int, int]], in_flight: int, events: int, age: float, fits: bool
) -> None:
    rooms = Rooms()
    for report in reports:
        rooms.note(3, report, 100.0)
    rooms.in_flight[3] = in_flight
    assert rooms.fits(3, events, 100.0 + age) is fits
