"""The pricing sandbox: replay stored events under a draft plan and compare with what
customers actually pay (``POST /v1/simulations``, ``tallyray simulate``).

- :mod:`.replay` — the event log, read as columns, folded into usage per billing period;
- :mod:`.compare` — actual against simulated per customer, and the summary over all;
- :mod:`.jobs` — the request, and one chunk of customers as a Ray task;
- :mod:`.service` — the job as the API drives it;
- :mod:`.report` — CSV and the HTML report.
"""

from tallyray.simulation.compare import compare_customer, summarize
from tallyray.simulation.replay import EventColumns

__all__ = ["EventColumns", "compare_customer", "summarize"]
