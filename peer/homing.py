"""Home-region choice with hysteresis (sans-IO: latencies in, decisions out).

Theory of operation.  A peer homes on one relay region: its relay connection
goes there and its node names it, so other peers reach it through that
region.  Moving is not free -- a new relay connection, a new node published,
every open session's packets re-routed -- and latency probes are noisy, so a
peer must not flap between two regions of about the same latency.

:class:`HomeChooser` keeps the current home and decides after each probe
round (a mapping region id -> median milliseconds, holding only the regions
that answered):

* the first round picks the fastest region that answered (the first
  candidate when none did);
* afterwards a *challenger* replaces the home only if it beats it by both
  margins of the :class:`Hysteresis` (e.g. 10 ms *and* 20 %) in
  ``rounds`` consecutive rounds; any round where it does not resets the
  count.  A home that did not answer a round is not left on that basis
  alone: the relay connection tells whether it is really down;
* the home is left at once when it is no longer a candidate (gone from the
  relay map, or marked unhealthy), or when the caller reports it unreachable
  (:meth:`HomeChooser.unreachable`, after the relay connection stayed down
  for a while): then the fastest other region that answered wins, with no
  margin (anything beats a dead relay).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Hysteresis:
    """How much better, for how long, a region must be to become the home.

    Attributes:
        margin_ms: it must be faster by at least this many milliseconds...
        margin_ratio: ...and by at least this fraction of the home's latency...
        rounds: ...in this many consecutive probe rounds.
    """

    margin_ms: float = 10.0
    margin_ratio: float = 0.2
    rounds: int = 2

    def beats(self, challenger_ms: float, home_ms: float) -> bool:
        """Whether ``challenger_ms`` is better than ``home_ms`` by both margins."""
        return (challenger_ms <= home_ms - self.margin_ms
                and challenger_ms <= home_ms * (1.0 - self.margin_ratio))


def fastest(latency_ms: Mapping[int, float], candidates: Sequence[int]) -> int | None:
    """The candidate with the lowest latency among those that answered (ties: the
    earlier candidate); None when none answered."""
    answered = [c for c in candidates if c in latency_ms]
    if not answered:
        return None
    return min(answered, key=lambda c: (latency_ms[c], candidates.index(c)))


class HomeChooser:
    """The home region of one peer (see the module docstring).

    Args:
        policy: the margins and rounds a challenger needs.

    Attributes:
        home: the current home region id (None before the first round).
    """

    def __init__(self, policy: Hysteresis | None = None) -> None:
        self.policy = policy or Hysteresis()
        self.home: int | None = None
        self._challenger: int | None = None
        self._wins = 0

    def _move(self, region: int | None) -> int | None:
        self._challenger, self._wins = None, 0
        if region is None or region == self.home:
            return None
        self.home = region
        return region

    def observe(self, latency_ms: Mapping[int, float], candidates: Sequence[int]) -> int | None:
        """One probe round.

        Args:
            latency_ms: median latency per region that answered.
            candidates: the usable region ids, in relay-map order.

        Returns:
            The new home when it changes (the first round always "changes"
            unless there is no candidate), else None.
        """
        if not candidates:
            return None
        if self.home is None or self.home not in candidates:
            best = fastest(latency_ms, candidates)
            return self._move(candidates[0] if best is None else best)
        best = fastest(latency_ms, candidates)
        home_ms = latency_ms.get(self.home, math.inf)
        if best is None or best == self.home or math.isinf(home_ms) \
                or not self.policy.beats(latency_ms[best], home_ms):
            self._challenger, self._wins = None, 0
            return None
        if best == self._challenger:
            self._wins += 1
        else:
            self._challenger, self._wins = best, 1
        if self._wins >= self.policy.rounds:
            return self._move(best)
        return None

    def unreachable(self, latency_ms: Mapping[int, float],
                    candidates: Sequence[int]) -> int | None:
        """The home's relay stayed unreachable: move to the fastest other candidate
        that answered ``latency_ms`` (no margin).  None when none did -- stay, and
        let the relay connection keep redialing."""
        others = [c for c in candidates if c != self.home]
        return self._move(fastest(latency_ms, others))
