"""Messages to an MQTT broker at a chosen speed, with progress and a count of what the
broker acknowledged.

A message due at data time ``d`` is published at ``start + (d - d_first) / speed``
seconds of wall time (``speed`` = data seconds per second; 0 = as fast as the broker
takes them). At most ``max_unacked`` messages wait for their acknowledgement
(PUBACK at QoS 1, written to the socket at QoS 0), so memory stays bounded at any
speed. A message the broker refuses (MQTT 5 PUBACK reason code) or never
acknowledges within ``ack_timeout`` seconds of the last publish is an error.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.errors import ForewarnError
from trainer.payloads import Message


@dataclass
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"  # or "3.1.1"
    username: str | None = None
    password_file: Path | None = None
    qos: int = 1


class Rebirths(Protocol):
    """An edge node that answers a host's Rebirth command (Sparkplug B)."""

    @property
    def command_topic(self) -> str: ...

    def wants_rebirth(self, payload: bytes) -> bool: ...

    def births(self) -> list[Message]: ...


@dataclass
class FeedResult:
    messages: int = 0
    readings: int = 0
    errors: int = 0
    rebirths: int = 0  # Rebirth commands answered (Sparkplug B)
    seconds: float = 0.0
    assets: dict[str, list[int]] = field(default_factory=dict)  # asset -> [messages, readings]

    @property
    def rate(self) -> float:
        return self.messages / max(self.seconds, 1e-9)


class Progress:
    """A status line on ``out`` (at most ~4 a second on a terminal, else one every 2 s),
    and a line for each asset once its last message is out."""

    def __init__(self, total_readings: int, assets: int, out: TextIO | None = sys.stderr,
                 label: str = "replay") -> None:
        self.total, self.assets, self.out, self.label = total_readings, assets, out, label
        self.tty = bool(out is not None and out.isatty())
        self.t0 = time.monotonic()
        self.shown = -float("inf")
        self.finished = 0
        self.drawn = -1  # messages at the last status line

    def update(self, res: FeedResult, m: Message) -> None:
        if self.out is None:
            return
        if m.last:
            self.finished += 1
            n, r = res.assets[m.asset]
            self._line(f"  {m.asset}: done, {n} messages, {r} readings")
        now = time.monotonic()
        if now - self.shown >= (0.25 if self.tty else 2.0):
            self.shown = now
            self._status(res, now)

    def _status(self, res: FeedResult, now: float) -> None:
        assert self.out is not None
        if res.messages == self.drawn:
            return
        self.drawn = res.messages
        pct = 100.0 * res.readings / max(1, self.total)
        rate = res.messages / max(now - self.t0, 1e-9)
        text = (f"{self.label} {pct:5.1f}%  {res.readings}/{self.total} readings  "
                f"{res.messages} messages  {rate:.0f} msg/s  "
                f"{self.finished}/{self.assets} assets done")
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n",
              file=self.out, flush=True)

    def _line(self, text: str) -> None:
        assert self.out is not None
        print(("\r\x1b[K" if self.tty else "") + text, file=self.out, flush=True)
        self.shown, self.drawn = -float("inf"), -1  # redraw the status line under it

    def close(self, res: FeedResult) -> None:
        if self.out is not None:
            self._status(res, time.monotonic())
            if self.tty:
                print(file=self.out, flush=True)


class _Acks:
    def __init__(self, rebirths: Rebirths | None = None) -> None:
        self.cond = threading.Condition()
        self.acked = self.refused = 0
        self.connected = threading.Event()
        self.connect_reason = ""
        self.rebirths = rebirths
        self.rebirth_wanted = threading.Event()  # set in paho's thread, served in feed's

    def on_connect(self, c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_reason = "" if not reason.is_failure else str(reason)
        if self.rebirths is not None and not reason.is_failure:
            c.subscribe(self.rebirths.command_topic, qos=1)
        self.connected.set()

    def on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if self.rebirths is not None and self.rebirths.wants_rebirth(msg.payload):
            self.rebirth_wanted.set()

    def on_publish(self, _c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        with self.cond:
            self.acked += 1
            if getattr(reason, "is_failure", False):
                self.refused += 1
            self.cond.notify_all()

    def wait_below(self, sent: int, limit: int, timeout: float) -> None:
        if sent - self.acked < limit:  # an int read needs no lock; waiting does
            return
        with self.cond:
            self.cond.wait_for(lambda: sent - self.acked < limit, timeout)


def _client(b: Broker, acks: _Acks, will: tuple[str, bytes] | None) -> mqtt.Client:
    proto = mqtt.MQTTv5 if b.protocol == "5" else mqtt.MQTTv311
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=proto)
    c.on_connect, c.on_publish = acks.on_connect, acks.on_publish
    c.on_message = acks.on_message
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    if b.username is not None:
        pw = b.password_file.read_text().strip() if b.password_file is not None else None
        c.username_pw_set(b.username, pw)
    if will is not None:
        c.will_set(will[0], will[1], qos=1)
    return c


def feed(msgs: Iterable[Message], broker: Broker, *, speed: float,
         will: tuple[str, bytes] | None = None, progress: Progress | None = None,
         max_unacked: int = 10_000, ack_timeout: float = 30.0,
         rebirths: Rebirths | None = None) -> FeedResult:
    """Publish ``msgs`` in order, paced by their due times; returns once the broker
    has acknowledged them (or ``ack_timeout`` passed). With ``rebirths``, a Rebirth
    command is answered with the node's BIRTHs between two messages."""
    acks = _Acks(rebirths)
    client = _client(broker, acks, will)
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as exc:
        raise ForewarnError(f"cannot connect to the broker {broker.host}:{broker.port} "
                            f"({exc})") from exc
    client.loop_start()
    res, sent, t_start, d0 = FeedResult(), 0, time.monotonic(), None
    done = False
    try:
        if not acks.connected.wait(15) or acks.connect_reason:
            raise ForewarnError(f"the broker {broker.host}:{broker.port} refused the "
                                f"connection ({acks.connect_reason or 'no CONNACK in 15 s'})")
        it = iter(msgs)
        while True:
            if rebirths is not None and acks.rebirth_wanted.is_set():
                # Before the next message is made (a Sparkplug message's seq is given
                # when it is made): it follows the new NBIRTH's seq.
                acks.rebirth_wanted.clear()
                for b in rebirths.births():
                    client.publish(b.topic, b.payload, qos=broker.qos)
                    sent += 1
                res.rebirths += 1
            m = next(it, None)
            if m is None:
                break
            d0 = m.due if d0 is None else d0
            if speed > 0:
                delay = t_start + (m.due - d0) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            acks.wait_below(sent, max_unacked, ack_timeout)
            client.publish(m.topic, m.payload, qos=broker.qos)  # unacknowledged = error
            sent += 1
            res.messages += 1
            res.readings += m.readings
            per = res.assets.setdefault(m.asset, [0, 0]) if m.asset else None
            if per is not None:
                per[0] += 1
                per[1] += m.readings
            if progress is not None:
                progress.update(res, m)
        acks.wait_below(sent, 1, ack_timeout)
        done = True
        if progress is not None:
            progress.close(res)
    finally:
        if will is not None and not done and acks.connected.is_set():
            # Stopped part way (Ctrl-C, an error): say so as the will would, since a
            # clean disconnect suppresses it.
            client.publish(*will, qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
    res.seconds = time.monotonic() - t_start
    res.errors += max(0, sent - acks.acked) + acks.refused
    return res
