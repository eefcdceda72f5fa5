"""The autouse guard in conftest.py: a unit test that calls ``ray.init`` fails."""

import pytest


def test_ray_init_is_refused_in_unit_tests() -> None:
    ray = pytest.importorskip("ray")
    with pytest.raises(RuntimeError, match="never start Ray"):
        ray.init()
