"""Serve one local provider until interrupted: try the money path without real cards.

From ``tests/``::

    python -m fakes stripe --port 12111 --api-key sk_test_local --webhook-secret whsec_local \
        --webhook-url http://127.0.0.1:8000/v1/providers/stripe/webhook
    python -m fakes adyen --port 12112 --api-key AQE_test_local --merchant-account LocalTest \
        --hmac-key 44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056 \
        --webhook-url http://127.0.0.1:8000/v1/providers/adyen/webhook

Then start ``tallyray serve`` with the same test-mode credentials and
``TALLYRAY_STRIPE_TEST_API_BASE`` / ``TALLYRAY_ADYEN_TEST_API_BASE`` set to the URL printed here
(docs/payments.md, "Test mode end to end"). The fake keeps what it was sent in memory and posts
its signed webhooks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from fakes import LocalServer
from fakes.adyen_server import FakeAdyen
from fakes.stripe_server import FakeStripe


def build(argv: Sequence[str]) -> LocalServer:
    parser = argparse.ArgumentParser(prog="python -m fakes", description=__doc__.split("\n")[0])
    parser.add_argument("provider", choices=("stripe", "adyen"))
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--api-key", help="the key the server sends (sk_test_… / AQE_…)")
    parser.add_argument("--webhook-url", help="where signed webhooks go: the server's endpoint")
    parser.add_argument("--webhook-secret", help="Stripe: the whsec_… the server verifies with")
    parser.add_argument("--merchant-account", default="TallyrayTest", help="Adyen")
    parser.add_argument("--hmac-key", help="Adyen: the notification HMAC key, in hex")
    args = parser.parse_args(argv)
    if args.provider == "stripe":
        return FakeStripe(
            args.api_key or "sk_test_tallyray",
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            port=args.port,
        )
    return FakeAdyen(
        args.api_key or "AQE_test_tallyray",
        args.merchant_account,
        webhook_url=args.webhook_url,
        hmac_key=args.hmac_key,
        port=args.port,
    )


def main(argv: Sequence[str]) -> int:
    fake = build(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(f"{type(fake).__name__} serving on {fake.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
