"""A shard names refused events by their index in its part of a request; the ingress names
them by their index in the request (tallyray/serve/admission.py)."""

from __future__ import annotations

import pytest

from tallyray.errors import Problem
from tallyray.serve.admission import _renumbered


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
