"""The event-time clock of one input partition, and the heartbeats it sends.

Each input partition (a Kafka partition live, the time-sorted file in replay) is read in order by one worker.
Its clock is the newest event time seen on it; its *watermark* is that time minus the allowed lateness: every
tick still to come on the partition is expected at or after it. Whenever the watermark crosses a bar
boundary, the clock sends a :class:`~flows.bars.Heartbeat` to every symbol it has seen, plus one to the
clock's own key (so that a partition without symbols still reports). Downstream, a heartbeat lets a quiet
symbol close its bars exactly as a continuous feed would (the bar step), and once every clock has passed a
time, bars up to it can be conditioned in a global event-time order (the inference step): the output is then
a function of the partitions' contents alone, not of how their reading interleaved, how fast each worker
ran, or where a crash and restart fell.

Heartbeats are emitted at the stream position where the watermark crossed the boundary, never at a batch
end, so their place among the ticks is a function of the partition's content too.

A tick far ahead of the clock (a clock error at a producer, a year 2099) must not drag every other symbol of
the partition along. It moves the clock only once another tick confirms the jump (one within ``max_ahead`` of
it, as the first ticks of a new session are after a night's gap); a tick near the clock refutes it, and one
far from both replaces it. After :data:`MAX_SUSPECTS` far-ahead ticks in a row, none near another (a stream
so thin its ticks are further apart than ``max_ahead``), the earliest of them becomes the clock.

Reference data (stamped at the start of its date, often published days ahead) neither moves the clock nor
makes its symbol a member: a symbol is sent heartbeats from its first trade or quote on,
until it has been idle for ``evict_after_ns``: its last heartbeat then says so (``evict``), the bar step
discards the symbol's state after it and the inference step the regime smoother's, so a universe that churns
through symbols keeps only the recently active ones. A symbol that returns starts afresh, as a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.bars import Heartbeat
from schemas.ticks import Reference
from schemas.wire import WireReference

#: Far-ahead ticks in a row, none confirming another, after which the earliest is taken as the clock.
MAX_SUSPECTS = 4


def clock_key(name: str) -> str:
    """The key a clock's own heartbeats travel under: no symbol can have it (symbols start alphanumeric)."""
    return f"@{name}"


@dataclass
class EventClock:
    """One partition's clock; pickled into recovery snapshots with the partition's offset.

    ``name`` identifies the partition among the ``clocks`` that feed the dataflow; ``lateness_ns`` is the
    allowed lateness (0 for a time-sorted file); ``max_ahead_ns`` the largest jump a single tick may make
    (None: any).
    """

    name: str
    clocks: int
    bar_ns: int
    lateness_ns: int = 0
    max_ahead_ns: int | None = None
    #: A symbol without a tick for this long (event time) gets a last heartbeat that discards its state
    #: downstream, and no more (None: never).
    evict_after_ns: int | None = None
    #: Newest event time accepted (0 before the first tick).
    now_ns: int = 0
    #: The newest tick that jumped more than ``max_ahead_ns`` ahead, waiting for confirmation (0: none), how
    #: many such ticks came in a row, and the earliest of them.
    suspect_ns: int = 0
    suspects_in_row: int = 0
    earliest_suspect_ns: int = 0
    #: The watermark must reach this to send the next heartbeats (0 before the first tick).
    next_beat_ns: int = 0
    #: Symbols of the partition -> their newest event time.
    symbols: dict[str, int] = field(default_factory=dict)

    def observe(self, tick) -> list[Heartbeat]:
        """Account for ``tick`` (about to be sent); returns the heartbeats to send *before* it."""
        if isinstance(tick, Reference | WireReference):
            return []
        beats = self.advance(self._accept(tick.ts_ns))
        self.symbols[tick.symbol] = max(self.symbols.get(tick.symbol, 0), tick.ts_ns)
        return beats

    def observe_run(self, first_ns: int, newest: dict[str, int]) -> list[Heartbeat]:
        """:meth:`observe` of every tick of a time-ordered run of trades and quotes whose watermark stays below
        the next bar boundary after its first tick (the caller cuts runs there): the heartbeats to send before
        the run. ``newest``: each symbol of the run -> its newest time in the run. A clock without
        ``max_ahead_ns`` only (a sorted file's), where every tick moves the clock."""
        assert self.max_ahead_ns is None, "a run of ticks is observed at once only where none can be held back"
        beats = self.advance(first_ns)
        for symbol, ts_ns in newest.items():
            self.symbols[symbol] = max(self.symbols.get(symbol, 0), ts_ns)
        self.now_ns = max(self.now_ns, *newest.values())
        return beats

    def advance(self, now_ns: int) -> list[Heartbeat]:
        """Move the clock to ``now_ns`` (if later); heartbeats for the bar boundary the watermark has reached."""
        self.now_ns = max(self.now_ns, now_ns)
        watermark = self.now_ns - self.lateness_ns
        if watermark < self.next_beat_ns or not self.now_ns:
            return []
        boundary = watermark // self.bar_ns * self.bar_ns
        self.next_beat_ns = boundary + self.bar_ns
        keys = sorted(self.symbols) + [clock_key(self.name)]
        gone = {
            s
            for s, t in self.symbols.items()
            if self.evict_after_ns is not None and boundary - t >= self.evict_after_ns
        }
        for symbol in gone:
            del self.symbols[symbol]
        return [Heartbeat(key, boundary, len(keys), self.name, self.clocks, key in gone) for key in keys]

    def _accept(self, ts_ns: int) -> int:
        """The time ``ts_ns`` lets the clock move to (the current time while a jump waits for confirmation)."""
        ahead = self.max_ahead_ns
        if ahead is None or not self.now_ns or ts_ns <= self.now_ns + ahead:
            self.suspect_ns, self.suspects_in_row = 0, 0  # near the clock: any suspect is refuted
            return ts_ns
        if self.suspect_ns and abs(ts_ns - self.suspect_ns) <= ahead:  # two ticks agree: the stream moved on
            confirmed = max(self.suspect_ns, ts_ns)
            self.suspect_ns, self.suspects_in_row = 0, 0
            return confirmed
        self.suspects_in_row += 1
        self.earliest_suspect_ns = ts_ns if self.suspects_in_row == 1 else min(self.earliest_suspect_ns, ts_ns)
        if self.suspects_in_row > MAX_SUSPECTS:  # a stream so thin its ticks are never near each other
            earliest = self.earliest_suspect_ns
            self.suspect_ns, self.suspects_in_row = 0, 0
            return earliest
        self.suspect_ns = ts_ns
        return self.now_ns
