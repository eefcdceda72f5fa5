"""Webhooks: what endpoints subscribe to, how messages are signed, and their delivery from
the outbox with retries. Alert rules themselves are evaluated by the shards
(:mod:`tallyray.actors.alerting`)."""

from tallyray.alerts.deliverer import Attempt, Deliverer, WebhookActor, start_webhooks
from tallyray.alerts.schedule import EVENT_TYPES, SUBSCRIBABLE_TYPES, TEST_EVENT, RetrySchedule
from tallyray.alerts.signing import new_secret, sign

__all__ = [
    "EVENT_TYPES",
    "SUBSCRIBABLE_TYPES",
    "TEST_EVENT",
    "Attempt",
    "Deliverer",
    "RetrySchedule",
    "WebhookActor",
    "new_secret",
    "sign",
    "start_webhooks",
]
