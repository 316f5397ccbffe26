"""The one name rule: what a site, asset, signal, bundle or Sparkplug id may be.

Names become MQTT topic levels, file and partition paths and text on the crew
page, so they are kept to a small alphabet: a letter or digit, then up to 63
letters, digits, ``_``, ``.`` or ``-``. That leaves out every control
character (a NUL in a topic makes Mosquitto drop the connection), the MQTT
wildcards ``+`` and ``#``, ``/`` (a second topic level or path component),
``$`` (broker topics), spaces and markup.

Every door uses this module: topic templates and ingest (``edge.ingest.topics``),
Sparkplug ids and metric names, the config (:data:`SafeName`), the API's path
parameters, bundle manifests, and the check on every topic the agent publishes
(:func:`topic_problem`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

NAME_MAX = 64
# Anchored for pydantic (its regex engine reads "$" as the end of the text); Python
# callers use is_safe_name(), a fullmatch, because re's "$" also matches before a
# trailing newline.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_SAFE = re.compile(NAME_PATTERN)
_WILDCARDS = "+#"
MAX_TOPIC_BYTES = 65_535  # an MQTT string's length prefix is two bytes


def is_safe_name(name: str) -> bool:
    return type(name) is str and _SAFE.fullmatch(name) is not None


def name_problem(name: object) -> str | None:
    """Why ``name`` breaks the rule (one short phrase), or None when it is safe."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if is_safe_name(name):
        return None
    if not name:
        return "is empty"
    bad = _first_unsafe(name)
    if bad is not None:
        return f"contains {bad}"
    if len(name) > NAME_MAX:
        return f"is {len(name)} characters long (at most {NAME_MAX})"
    return f"must start with a letter or digit (got {name[0]!r})"


def _first_unsafe(name: str) -> str | None:
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch in "_.-"):
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            return f"a control character (U+{ord(ch):04X})"
        if ch in _WILDCARDS:
            return f"the MQTT wildcard {ch!r}"
        if ch == "/":
            return "'/' (a topic level or path separator)"
        return f"the character {ch!r} (allowed: letters, digits, '_', '.', '-')"
    return None


def check_name(name: str) -> str:
    """``name`` itself, or ValueError saying what is wrong (for pydantic validators)."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)  # the caller names the field and shows the value
    return name


# A config or API field holding a name; the error says what is wrong with the value.
SafeName = Annotated[str, AfterValidator(check_name)]


def topic_problem(topic: str) -> str | None:
    """Why the agent must not publish on ``topic``, or None when a broker accepts it.

    A PUBLISH topic may not hold wildcards, a NUL or invalid UTF-8 (Mosquitto
    disconnects the client: a malformed packet); control characters are refused
    too (MQTT 5 1.5.4 says they should not appear, and some brokers treat them as
    malformed).
    """
    if not topic:
        return "is empty"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    if size > MAX_TOPIC_BYTES:
        return f"is {size} bytes long (at most {MAX_TOPIC_BYTES})"
    for ch in topic:
        if ch in _WILDCARDS:
            return f"contains the MQTT wildcard {ch!r}"
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\ufffe\uffff":
            return f"contains a control character (U+{ord(ch):04X})"
    return None


def template_problem(template: str, placeholders: tuple[str, ...]) -> str | None:
    """Why a topic template is unusable: literal levels must be names or MQTT-safe."""
    if not template:
        return "is empty"
    for level in template.split("/"):
        if level in placeholders:
            continue
        if any(p in level for p in placeholders):
            return f"placeholder must fill a whole level, got {level!r}"
        if level == "":
            return "has an empty level"
        problem = topic_problem(level)
        if problem is not None:
            return f"level {level!r} {problem}"
    return None
