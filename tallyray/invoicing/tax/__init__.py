"""Tax: which tax applies to a supply, at what rate, with what note and what evidence.

Pure Python: no Ray, no SQL, no clock; the only file read is the VAT rates table. The public
face::

    from tallyray.invoicing.tax import Party, build_engine, parse_tax_config

    engine = build_engine(parse_tax_config(doc.get("tax")), verifier)
    decision = engine.decide(seller, buyer, on)   # → TaxDecision
    tax = decision.tax_on(taxable)                # full precision; the invoice rounds

See docs/tax.md.
"""

from tallyray.invoicing.tax.config import ENGINES, TaxConfig, build_engine, parse_tax_config
from tallyray.invoicing.tax.engine import (
    TAX_KINDS,
    Jurisdiction,
    NoTax,
    Party,
    TaxDecision,
    TaxEngine,
    parse_rate,
    supply_date,
)
from tallyray.invoicing.tax.eu_vat import (
    EXPORT_NOTE,
    REVERSE_CHARGE_NOTE,
    EuVat,
    RatePeriod,
    VatRates,
    load_vat_rates,
    packaged_vat_rates,
    parse_vat_rates,
)
from tallyray.invoicing.tax.vat_ids import (
    EU_MEMBER_STATES,
    StaticVerifier,
    UnavailableVerifier,
    VatIdCheck,
    VatVerifier,
    Verification,
    check_vat_id,
    country_of_prefix,
    vat_prefix,
)

__all__ = [
    "ENGINES",
    "EU_MEMBER_STATES",
    "EXPORT_NOTE",
    "REVERSE_CHARGE_NOTE",
    "TAX_KINDS",
    "EuVat",
    "Jurisdiction",
    "NoTax",
    "Party",
    "RatePeriod",
    "StaticVerifier",
    "TaxConfig",
    "TaxDecision",
    "TaxEngine",
    "UnavailableVerifier",
    "VatIdCheck",
    "VatRates",
    "VatVerifier",
    "Verification",
    "build_engine",
    "check_vat_id",
    "country_of_prefix",
    "load_vat_rates",
    "packaged_vat_rates",
    "parse_rate",
    "parse_tax_config",
    "parse_vat_rates",
    "supply_date",
    "vat_prefix",
]
