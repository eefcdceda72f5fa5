"""The customer portal: signed session links, and the pure pieces its pages are built from
(charts, forecasts). The routes live in :mod:`tallyray.serve.routes.portal`."""

from tallyray.portal.charts import ChartData, DayUsage, bar_chart, chart_data
from tallyray.portal.forecast import Forecast, elapsed_fraction, forecast_spend, period_forecast
from tallyray.portal.tokens import (
    ExpiredToken,
    InvalidToken,
    PortalKeys,
    PortalSession,
    issue_token,
    read_token,
)

__all__ = [
    "ChartData",
    "DayUsage",
    "ExpiredToken",
    "Forecast",
    "InvalidToken",
    "PortalKeys",
    "PortalSession",
    "bar_chart",
    "chart_data",
    "elapsed_fraction",
    "forecast_spend",
    "issue_token",
    "period_forecast",
    "read_token",
]
