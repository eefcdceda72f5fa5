"""What ``start_ray`` hands to the Ray it starts (tallyray/cluster/wiring.py)."""

from __future__ import annotations

import os

import ray

from tallyray.cluster.wiring import SERVE_CONTROL_LOOP_SECONDS


@ray.remote(num_cpus=0)
def _serve_control_loop_interval() -> str | None:
    return os.environ.get("RAY_SERVE_CONTROL_LOOP_INTERVAL_S")


def test_ray_s_processes_run_serve_s_controller_loop_at_tallyray_s_interval(
    ray_session: None,
) -> None:
    # Serve's controller is one of these worker processes: it reads the interval at import.
    assert ray.get(_serve_control_loop_interval.remote()) == SERVE_CONTROL_LOOP_SECONDS
