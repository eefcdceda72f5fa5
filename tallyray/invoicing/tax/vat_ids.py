"""EU VAT identification numbers: format and check digit (python-stdnum), and the verifier.

Two checks, in order:

1. **Format**, offline: :func:`check_vat_id` normalizes what the customer typed
   (``"de 136 695 976"`` → ``"DE136695976"``, Greece's ``GR`` prefix → ``EL``) and checks the
   country's format and check digit with :mod:`stdnum.eu.vat`.
2. **Registration**, online: a :class:`VatVerifier` asks whether the id is registered, which
   for the EU means VIES. The verifier is an outside system behind a Protocol, so two
   in-memory ones ship here: :class:`UnavailableVerifier` (the answer when VIES cannot be
   reached, as from this server) and :class:`StaticVerifier` (a fixed list, for tests and for
   operators who have checked their customers' ids themselves).

A verifier that cannot answer returns ``valid=None``; it does not guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stdnum import exceptions as stdnum_errors
from stdnum.eu import vat as eu_vat

__all__ = [
    "EU_MEMBER_STATES",
    "StaticVerifier",
    "UnavailableVerifier",
    "VatIdCheck",
    "VatVerifier",
    "Verification",
    "check_vat_id",
    "country_of_prefix",
    "vat_prefix",
]

#: The 27 member states, by ISO 3166-1 code (Greece is ``GR`` here, ``EL`` in VAT ids).
EU_MEMBER_STATES = frozenset(
    {
        "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
        "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
    }
)  # fmt: skip

# stdnum's words for what is wrong, in the few words an invoice note can carry.
_REASONS: Mapping[type[stdnum_errors.ValidationError], str] = {
    stdnum_errors.InvalidChecksum: "wrong check digit",
    stdnum_errors.InvalidLength: "wrong length",
    stdnum_errors.InvalidFormat: "wrong format",
    stdnum_errors.InvalidComponent: "unknown country prefix or wrong format",
}


def vat_prefix(country: str) -> str:
    """The prefix of a member state's VAT ids: the ISO code, except ``EL`` for Greece."""
    return "EL" if country == "GR" else country


def country_of_prefix(prefix: str) -> str:
    """The ISO 3166-1 code behind a VAT-id prefix: ``GR`` for ``EL``, the prefix otherwise."""
    return "GR" if prefix == "EL" else prefix


@dataclass(frozen=True, slots=True)
class VatIdCheck:
    """The offline check of one VAT id.

    ``vat_id`` is normalized: no spaces or punctuation, capitals, with the country prefix
    (``EL`` for Greece). ``country`` is the ISO code of that prefix (``GR`` for ``EL``).
    ``error`` is ``None`` when the format and check digit are right, else what is wrong.
    """

    vat_id: str
    country: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_vat_id(raw: str, default_country: str | None = None) -> VatIdCheck:
    """Normalize and check an EU VAT id's format and check digit, offline.

    An id typed without its country prefix (``"136695976"``) gets ``default_country``'s
    prefix (``"DE136695976"``) before it is checked.
    """
    text = "".join(ch for ch in raw if ch.isalnum()).upper()
    if not text:
        return VatIdCheck(text, None, "empty")
    # No national number starts with two letters, so two letters are a country prefix.
    if not text[:2].isalpha() and default_country in EU_MEMBER_STATES:
        text = vat_prefix(default_country) + text
    if text.startswith("GR"):
        text = "EL" + text[2:]
    prefix = text[:2]
    country = country_of_prefix(prefix) if prefix.isalpha() and len(prefix) == 2 else None
    try:
        normalized = eu_vat.validate(text)
    except stdnum_errors.ValidationError as error:
        return VatIdCheck(text, country, _REASONS.get(type(error), "wrong format"))
    if country not in EU_MEMBER_STATES:
        # stdnum also knows XI (Northern Ireland goods) and EU/IM (non-Union OSS numbers):
        # none of them belongs to a member state.
        return VatIdCheck(normalized, country, f"{prefix} is not an EU member state's prefix")
    return VatIdCheck(normalized, country, None)


@dataclass(frozen=True, slots=True)
class Verification:
    """Evidence of one VAT-id check, stored with the invoice.

    ``valid`` is ``True`` (registered), ``False`` (not registered, or a wrong format), or
    ``None`` (the verifier could not answer). ``source`` names who answered: ``"vies"``,
    ``"static"``, ``"unavailable"``, ``"format"`` (the offline check failed, nobody was asked).
    ``checked_at`` is microseconds since the epoch.
    """

    vat_id: str
    valid: bool | None
    source: str
    checked_at: int
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "vat_id": self.vat_id,
            "valid": self.valid,
            "source": self.source,
            "checked_at": self.checked_at,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Verification:
        return cls(
            vat_id=doc["vat_id"],
            valid=doc["valid"],
            source=doc["source"],
            checked_at=doc["checked_at"],
            detail=doc.get("detail"),
        )


class VatVerifier(Protocol):
    """Asks whether a VAT id is registered. ``vat_id`` is normalized and has passed
    :func:`check_vat_id`; ``now`` is microseconds since the epoch.

    A verifier that cannot reach its service, or gets no clear answer, returns
    ``valid=None`` with the reason in ``detail``; it does not raise and does not guess.
    """

    def verify(self, vat_id: str, now: int) -> Verification: ...


class UnavailableVerifier:
    """The verifier when VIES cannot be reached: it never knows (``valid=None``)."""

    def verify(self, vat_id: str, now: int) -> Verification:
        return Verification(
            vat_id=vat_id,
            valid=None,
            source="unavailable",
            checked_at=now,
            detail="VIES cannot be reached from here",
        )


class StaticVerifier:
    """A fixed answer per VAT id, in memory: for tests, and for operators' allow-lists.

    Keys may be written as typed (``"DE 136 695 976"``); they are normalized. An id not in
    the mapping is not known (``valid=None``): it is neither confirmed nor refused.
    """

    def __init__(self, answers: Mapping[str, bool]) -> None:
        self._answers = {check_vat_id(key).vat_id: bool(ok) for key, ok in answers.items()}

    def verify(self, vat_id: str, now: int) -> Verification:
        answer = self._answers.get(check_vat_id(vat_id).vat_id)
        return Verification(
            vat_id=vat_id,
            valid=answer,
            source="static",
            checked_at=now,
            detail=None if answer is not None else "not in the list of checked VAT ids",
        )
