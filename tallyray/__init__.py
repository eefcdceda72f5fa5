"""Tallyray: real-time metering and billing for AI and SaaS products, on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tallyray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
