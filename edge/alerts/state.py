"""The operating-state rule: idle or changeover codes suppress an asset's alerts.

The machine reports its state as a numeric code on ``alerts.state_signal``; a code
in ``alerts.suppress_states`` puts the asset in maintenance (alerts suppressed,
shown as such on the page), any other code lifts it. Only changes are passed on,
so a state repeated every sample costs one dictionary look-up::

    >>> calls = []
    >>> rule = StateRule("mode", [0.0, 3.0], lambda a, on, who: calls.append((a, on, who)))
    >>> for code in (1.0, 0.0, 0.0, 3.0, 2.0):
    ...     rule.update("m1", code)
    >>> calls
    [('m1', False, 'state:mode=1'), ('m1', True, 'state:mode=0'), ('m1', False, 'state:mode=2')]
"""

from __future__ import annotations

from collections.abc import Callable, Collection

__all__ = ["StateRule"]


class StateRule:
    """``update(asset, code)``; ``set_maintenance(asset, on, who)`` on each change."""

    def __init__(self, signal: str, suppress: Collection[float],
                 set_maintenance: Callable[[str, bool, str], object]) -> None:
        self.signal = signal
        self.suppress = frozenset(suppress)
        self.set_maintenance = set_maintenance
        self._suppressed: dict[str, bool] = {}

    def update(self, asset: str, code: float) -> None:
        suppress = code in self.suppress
        if self._suppressed.get(asset) == suppress:
            return
        self._suppressed[asset] = suppress
        self.set_maintenance(asset, suppress, f"state:{self.signal}={code:g}")
