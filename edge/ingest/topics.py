"""Topic templates: which MQTT topics carry readings, and for which asset and signal.

A template is an MQTT topic with whole-level placeholders ``{site}``, ``{asset}``
and ``{signal}``, so a plant's existing topic tree can be used as it is::

    >>> tm = TopicMap(["forewarn/{site}/{asset}/{signal}", "plant/{asset}/sensors/{signal}"],
    ...               site="s1")
    >>> tm.subscriptions()
    ['forewarn/s1/+/+', 'plant/+/sensors/+']
    >>> tm.match("plant/press-4/sensors/temp")
    TopicMatch(site='s1', asset='press-4', signal='temp')
    >>> tm.match("forewarn/s1/alerts/press-4") is None   # the agent's own output
    True

Rules:
- ``{asset}`` is required; without ``{signal}`` the topic is an *asset topic*
  whose payload names the signals. ``{site}`` is replaced by the configured site,
  so another site's topics never match.
- Asset and signal levels must match the name rule
  (:mod:`edge.core.names`); other topics do not match (the router counts them as
  ``bad_name`` and dead-letters them).
- When several templates match one topic, the first in the list wins.
- Topics under the agent's own output (alerts, events: the ``exclude`` templates)
  and under ``spBv1.0/`` or ``$`` (broker internals) are never readings.
- Results are cached per topic string in a bounded LRU cache, so the hot path
  pays one dictionary lookup per message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from edge.core.errors import ConfigError
from edge.core.names import NAME_PATTERN, is_safe_name, name_problem, template_problem

__all__ = ["SPARKPLUG_NAMESPACE", "TopicMap", "TopicMatch", "is_safe_name"]
PLACEHOLDERS = ("{site}", "{asset}", "{signal}")
_PLACEHOLDERS = PLACEHOLDERS
SPARKPLUG_NAMESPACE = "spBv1.0"  # the Sparkplug B topic namespace (its first level)
DEFAULT_EXCLUDE = ("forewarn/{site}/alerts/{asset}", "forewarn/{site}/events/{asset}")
# Never readings whatever the templates say: Sparkplug has its own decoder,
# and $SYS/... belongs to the broker.
_ALWAYS_EXCLUDED = ("spBv1.0/", "$")


class TopicMatch(NamedTuple):
    site: str
    asset: str
    signal: str | None  # None on an asset topic: the payload names the signals


class _Template(NamedTuple):
    levels: tuple[str, ...]  # literal level, or "{asset}" / "{signal}"
    asset_at: int
    signal_at: int  # -1 for an asset topic


def _compile(template: str, site: str) -> _Template:
    problem = template_problem(template, _PLACEHOLDERS)
    if problem is not None:
        raise ConfigError(f"topic template {template!r} {problem}")
    levels = tuple(site if lvl == "{site}" else lvl for lvl in template.split("/"))
    for lvl in levels:
        if any(p in lvl for p in _PLACEHOLDERS) and lvl not in _PLACEHOLDERS:
            raise ConfigError(f"topic template {template!r}: placeholder must fill a whole "
                              f"level, got {lvl!r}")
        if "+" in lvl or "#" in lvl:
            raise ConfigError(f"topic template {template!r}: wildcards are not allowed; "
                              "use {asset} and {signal}")
    if levels.count("{asset}") != 1 or levels.count("{signal}") > 1:
        raise ConfigError(f"topic template {template!r}: needs exactly one {{asset}} and at "
                          "most one {signal}")
    signal_at = levels.index("{signal}") if "{signal}" in levels else -1
    return _Template(levels, levels.index("{asset}"), signal_at)


class TopicMap:
    """Maps topics to (site, asset, signal) by templates; see the module docstring."""

    def __init__(self, templates: Sequence[str], site: str,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE, cache_size: int = 65_536) -> None:
        problem = name_problem(site)
        if problem is not None:
            raise ConfigError(f"site {site!r} {problem} ({NAME_PATTERN})")
        if not templates:
            raise ConfigError("topic templates: at least one template is needed")
        self.site = site
        self._templates = [_compile(t, site) for t in templates]
        self._by_depth: dict[int, list[_Template]] = {}
        for t in self._templates:
            self._by_depth.setdefault(len(t.levels), []).append(t)
        self._exclude_prefixes: list[str] = []
        self._exclude_exact: list[_Template] = []
        for ex in exclude:
            self._add_exclusion(ex)
        # Bound per instance; the cache holds negative answers too so a flood of
        # stray topics costs a lookup each, and it cannot grow past cache_size.
        self.match = lru_cache(maxsize=cache_size)(self._match)

    def _add_exclusion(self, template: str) -> None:
        levels = [self.site if lvl == "{site}" else lvl for lvl in template.split("/")]
        prefix: list[str] = []
        for lvl in levels:
            if lvl in _PLACEHOLDERS:
                break
            prefix.append(lvl)
        # "forewarn/s1/alerts" excludes everything at or below it, including the
        # three-level topic an asset template would read as asset "alerts".
        if len(prefix) >= 2:
            self._exclude_prefixes.append("/".join(prefix))
        else:
            self._exclude_exact.append(_compile(template, self.site))

    def subscriptions(self) -> list[str]:
        """MQTT topic filters covering every template (deduplicated, in template order)."""
        out: list[str] = []
        for t in self._templates:
            f = "/".join("+" if lvl in _PLACEHOLDERS else lvl for lvl in t.levels)
            if f not in out:
                out.append(f)
        return out

    def is_excluded(self, topic: str) -> bool:
        """True for topics that are never readings (the agent's own alerts and events)."""
        return self._excluded(topic, topic.split("/"))

    def _excluded(self, topic: str, parts: list[str]) -> bool:
        if topic.startswith(_ALWAYS_EXCLUDED):
            return True
        for p in self._exclude_prefixes:
            if topic == p or topic.startswith(p + "/"):
                return True
        return any(_fits(t, parts) for t in self._exclude_exact)

    def _match(self, topic: str) -> TopicMatch | None:
        parts = topic.split("/")
        candidates = self._by_depth.get(len(parts))
        if not candidates or self._excluded(topic, parts):
            return None
        for t in candidates:
            if not _fits(t, parts):
                continue
            asset = parts[t.asset_at]
            signal = parts[t.signal_at] if t.signal_at >= 0 else None
            if not is_safe_name(asset) or (signal is not None and not is_safe_name(signal)):
                continue
            return TopicMatch(self.site, asset, signal)
        return None

    def refusal(self, topic: str) -> str | None:
        """Why a topic that fits a template did not match: its asset or signal level
        breaks the name rule (the router then rejects it as ``bad_name``)."""
        parts = topic.split("/")
        if self._excluded(topic, parts):
            return None
        for t in self._by_depth.get(len(parts), []):
            if not _fits(t, parts):
                continue
            for what, at in (("asset", t.asset_at), ("signal", t.signal_at)):
                problem = name_problem(parts[at]) if at >= 0 else None
                if problem is not None:
                    return f"{what} level {parts[at][:40]!r} {problem}"
        return None


def _fits(t: _Template, parts: list[str]) -> bool:
    if len(parts) != len(t.levels):
        return False
    return all(lvl in _PLACEHOLDERS or lvl == p for lvl, p in zip(t.levels, parts, strict=True))
