"""The operator's secrets, and how each process finds them.

Secrets — the database URL (it may hold a password), the admin key, the payment providers'
keys and webhook secrets — never travel as arguments of a Ray actor, a Ray task or the Serve
deployment: Ray keeps those in its control store and shows them in its dashboard. Nor are
they logged. Each process reads them itself, first found first:

1. its environment (``TALLYRAY_DATABASE_URL``, …);
2. the file named by the variable with ``_FILE`` appended
   (``TALLYRAY_DATABASE_URL_FILE=/run/secrets/db``: how Docker and Kubernetes mount secrets);
3. the deployment's secrets file (``TALLYRAY_SECRETS_FILE``, or the path a process was
   given): a JSON object of variable → value, readable by its owner only.

``tallyray serve`` writes such a file for the processes it starts on its machine when it was
given secrets as flags (:func:`write_secrets_file`), and removes it when it stops. On a
multi-node cluster every node needs the variables, or the files, itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DATABASE_URL_VARIABLE",
    "SECRETS_FILE_VARIABLE",
    "database_url",
    "read_secret",
    "remove_secrets_file",
    "write_secrets_file",
]

SECRETS_FILE_VARIABLE = "TALLYRAY_SECRETS_FILE"
DATABASE_URL_VARIABLE = "TALLYRAY_DATABASE_URL"


def read_secret(variable: str, secrets_file: str | None = None) -> str | None:
    """The value of the secret ``variable`` for this process, or ``None``."""
    value = os.environ.get(variable)
    if value:
        return value
    named = os.environ.get(f"{variable}_FILE")
    if named:
        try:
            return Path(named).read_text(encoding="utf-8").strip() or None
        except OSError as error:
            raise RuntimeError(f"{variable}_FILE: cannot read {named}: {error.strerror}") from None
    path = secrets_file or os.environ.get(SECRETS_FILE_VARIABLE)
    if path:
        found = _read_file(path).get(variable)
        return found if isinstance(found, str) and found else None
    return None


def database_url(given: str | None, secrets_file: str | None) -> str:
    """The database URL a process uses: ``given`` (tests and embedding pass one), else its
    secret (:func:`read_secret`). Never a default: a shard on another database than the rest
    of its deployment would be worse than one that does not start."""
    url = given or read_secret(DATABASE_URL_VARIABLE, secrets_file)
    if not url:
        raise RuntimeError(
            f"no database URL: set {DATABASE_URL_VARIABLE} (or {DATABASE_URL_VARIABLE}_FILE, "
            f"or {SECRETS_FILE_VARIABLE}) for every Tallyray process"
        )
    return url


def _read_file(path: str) -> Mapping[str, object]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise RuntimeError(f"secrets file {path}: {error.strerror}") from None
    except ValueError as error:
        raise RuntimeError(f"secrets file {path} is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise RuntimeError(f"secrets file {path} must hold a JSON object")
    return doc


def write_secrets_file(secrets: Mapping[str, str]) -> str:
    """Write ``secrets`` (variable → value) to a new file only this user can read, in a
    private directory; return its path. The caller removes it (:func:`remove_secrets_file`)."""
    folder = tempfile.mkdtemp(prefix="tallyray-secrets-")  # mode 0700
    path = os.path.join(folder, "secrets.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(dict(secrets), out)
    return path


def remove_secrets_file(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or gone: leave it
        Path(path).parent.rmdir()
