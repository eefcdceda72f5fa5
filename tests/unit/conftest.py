"""Shared set-up for the unit tests: no Ray, fast and repeatable hypothesis runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("unit", max_examples=150, deadline=None, database=None)
settings.load_profile("unit")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "llm-api"


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never start Ray: any ``ray.init`` fails loudly."""
    try:
        import ray
    except ImportError:  # Ray not installed: nothing can start it
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests never start Ray: ray.init() was called")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def example_config_path() -> Path:
    return EXAMPLE_DIR / "tallyray.json"


@pytest.fixture
def example_events_path() -> Path:
    return EXAMPLE_DIR / "events.jsonl"
