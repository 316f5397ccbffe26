"""Per-person bearer tokens and a failed-attempt limiter (the audit log is edge.core.audit).

Tokens live in a file of ``person:token`` lines (systemd ``LoadCredential=``),
never in the config text. Every token is compared in constant time against
every known token, so neither timing nor early exit tells which part matched.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from edge.core.errors import ConfigError

MIN_TOKEN_CHARS = 16
_PERSON_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")


def load_tokens(path: Path) -> dict[str, str]:
    """Read ``person:token`` lines (``#`` comments and blank lines allowed)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API tokens ({exc.strerror})") from exc
    tokens: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        person, sep, token = (p.strip() for p in line.partition(":"))
        if not sep or not person or not set(person) <= _PERSON_CHARS or len(person) > 64:
            raise ConfigError(f"{path}:{n}: expected 'person:token' with a plain person name")
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{path}:{n}: token of {person!r} is shorter than "
                              f"{MIN_TOKEN_CHARS} characters")
        if person in tokens:
            raise ConfigError(f"{path}:{n}: person {person!r} appears twice")
        tokens[person] = token
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError(f"{path}: two people share a token (the audit log could not tell "
                          "them apart)")
    return tokens


class FailureLimiter:
    """Counts failed logins per client address in a sliding window (bounded memory).

    It gates only requests that carry a wrong token (the caller checks the token
    first): a valid one is never refused because someone else at the address
    guessed. ``first_refusal`` is true once per lock-out, so a guessing flood costs
    one audit line, not one fsync per guess.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window_s, self.max_clients = max_failures, window_s, max_clients
        self._clock = clock
        self._fails: dict[str, deque[float]] = {}
        self._announced: dict[str, float] = {}  # client -> start of its current lock-out
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        with self._lock:
            q = self._fails.get(client)
            if q is None:
                return False
            self._expire(q)
            if not q:
                del self._fails[client]
            return len(q) >= self.max_failures

    def fail(self, client: str) -> None:
        with self._lock:
            if client not in self._fails and len(self._fails) >= self.max_clients:
                for key in [k for k, q in self._fails.items() if not self._expire(q)]:
                    del self._fails[key]
                if len(self._fails) >= self.max_clients:  # flood of addresses: forget oldest
                    self._fails.pop(next(iter(self._fails)))
            q = self._fails.setdefault(client, deque(maxlen=self.max_failures))
            q.append(self._clock())

    def first_refusal(self, client: str) -> bool:
        with self._lock:
            q = self._fails.get(client)
            start = q[0] if q else self._clock()
            if self._announced.get(client) == start:
                return False
            if len(self._announced) >= self.max_clients:
                self._announced.clear()  # worst case: a second audit line per client
            self._announced[client] = start
            return True

    def retry_after(self, client: str) -> int:
        with self._lock:
            q = self._fails.get(client)
            if not q:
                return 0
            return max(1, int(q[0] + self.window_s - self._clock()) + 1)

    def _expire(self, q: deque[float]) -> deque[float]:
        cutoff = self._clock() - self.window_s
        while q and q[0] < cutoff:
            q.popleft()
        return q


class TokenAuth:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        # Compare digests: equal length whatever the token lengths are.
        self._digests = [(p, hashlib.sha256(t.encode()).digest()) for p, t in tokens.items()]

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def person(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        found = None
        for person, known in self._digests:  # no early exit
            if hmac.compare_digest(digest, known):
                found = person
        return found
