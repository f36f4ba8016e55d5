"""Importers: vendor tick files (TAQ, LOBSTER) -> the canonical tick table of :mod:`schemas.canonical`."""

from flows.sources.lobster import read_lobster
from flows.sources.taq import read_taq, read_taq_quotes, read_taq_trades

__all__ = ["read_lobster", "read_taq", "read_taq_quotes", "read_taq_trades"]
