"""One symbol's trades and quotes as columns: what the column-wise feature update (:meth:`SymbolFeatures.on_ticks`,
:func:`state.replay`), the batch oracle (:mod:`conditioning.features.batch`) and replay's tick blocks
(flows/bars.py) pass around instead of one object per tick."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Ticks:
    """One symbol's ticks in event order (``[N]`` arrays; trade rows have NaN bid/ask, quote rows NaN price)."""

    ts_ns: np.ndarray  # int64
    is_trade: np.ndarray  # bool
    price: np.ndarray
    size: np.ndarray
    bid: np.ndarray
    bid_size: np.ndarray
    ask: np.ndarray
    ask_size: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_ns)

    def rows(self, lo: int, hi: int) -> Ticks:
        """Rows ``lo..hi-1`` (views)."""
        return Ticks(*(c[lo:hi] for c in self.arrays()))

    def where(self, mask: np.ndarray) -> Ticks:
        """The rows where ``mask`` (``[N]`` bool) holds (copies)."""
        return Ticks(*(c[mask] for c in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(ts_ns, is_trade, price, size, bid, bid_size, ask, ask_size)``."""
        return (self.ts_ns, self.is_trade, self.price, self.size, self.bid, self.bid_size, self.ask, self.ask_size)

    @classmethod
    def from_canonical(cls, table: pa.Table, symbol: str) -> Ticks:
        """Select ``symbol`` from a canonical tick table (``schemas.canonical``), keeping the row order."""
        t = table.filter(pa.compute.equal(table["symbol"], symbol))

        def col(name: str) -> np.ndarray:
            return t[name].to_numpy(zero_copy_only=False).astype(np.float64)

        return cls(
            ts_ns=t["ts_ns"].to_numpy().astype(np.int64),
            is_trade=(t["kind"].to_numpy(zero_copy_only=False) == "trade"),
            price=col("price"),
            size=col("size"),
            bid=col("bid"),
            bid_size=col("bid_size"),
            ask=col("ask"),
            ask_size=col("ask_size"),
        )
