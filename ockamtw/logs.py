"""
Logging that an attacker cannot turn into an amplifier.

  - L{short} bounds any text or bytes that a peer controls before it goes
    into a log event.
  - L{Throttle} lets through the first few events of a kind from one peer
    in each period and counts the rest, then says how many it held back.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Characters of peer-controlled text a log line shows at most.
MAX_SHOWN = 80


def short(value, limit: int = MAX_SHOWN) -> str:
    """
    Text of C{value} (text, bytes as hex, a route...) for a log line:
    control characters escaped, cut to about C{limit} characters with the
    full length noted.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = raw[: limit // 2].hex()
        return text if len(raw) <= limit // 2 else f"{text}... ({len(raw)} bytes)"
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return _escape(text[:limit]) + f"... ({len(text)} characters)"
    return _escape(text)


def _escape(text: str) -> str:
    # Control characters (a newline forging a log line) shown escaped.
    if text.isprintable():
        return text
    return repr(text)[1:-1]


class Throttle:
    """
    Rate limits for log events, by key (e.g. the kind of event and the peer).

    At most C{burst} events of one key are logged in each C{period}
    seconds; the rest are counted, and the next one logged after the period
    carries the count (C{suppressed} in the event).  At most C{max_keys}
    keys are tracked; past that, the oldest are forgotten.

    @param clock: an L{IReactorTime} (the node's reactor).
    """

    def __init__(self, clock, burst: int = 5, period: float = 10.0, max_keys: int = 1024) -> None:
        self.clock = clock
        self.burst = burst
        self.period = period
        self.max_keys = max_keys
        self._state: Dict[object, Tuple[float, int, int]] = {}
        #: events held back in all, since the start
        self.suppressed = 0

    def admit(self, key) -> int:
        """
        Whether to log an event of C{key} now: C{-1} if not, else the
        number of events of that key held back since the last one logged
        (usually 0).
        """
        now = self.clock.seconds()
        state = self._state.get(key)
        if state is None or now - state[0] >= self.period:
            held = state[2] if state is not None else 0
            if state is None and len(self._state) >= self.max_keys:
                # Forget the oldest key (dicts keep insertion order).
                self._state.pop(next(iter(self._state)))
            self._state.pop(key, None)
            self._state[key] = (now, 1, 0)
            return held
        start, logged, held = state
        if logged < self.burst:
            self._state[key] = (start, logged + 1, held)
            return 0
        self._state[key] = (start, logged, held + 1)
        self.suppressed += 1
        return -1

    def log(self, logger, level: str, key, format: str, **kw) -> None:
        """
        Emit C{logger.<level>(format, **kw)} if L{admit} lets it through,
        adding C{suppressed=N} (and a note in the text) when events were
        held back.
        """
        held = self.admit(key)
        if held < 0:
            return
        if held:
            format += " ({suppressed} similar events suppressed)"
            kw["suppressed"] = held
        getattr(logger, level)(format, **kw)
