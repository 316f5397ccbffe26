"""Multi-process ingest: N worker processes share the JSON subscriptions and decode.

One Python process tops out near paho's ~15 µs per message (measured on a 2-core gateway), far below
the broker's delivery ceiling. With ``ingest.processes = N > 1`` each worker
process has its own paho client on an MQTT 5 shared subscription
(``$share/forewarn/<filter>``), decodes what it receives and sends compact
decoded batches (column arrays, not per-reading objects) over a pipe to the
scoring process, which keeps one window stage for all assets.

Order: a shared subscription hands consecutive readings of one asset to
different workers, and each worker's persistent session keeps its own share of
a backlog. After an outage or a restart the workers reconnect at different
moments and one would drain its whole share (every slot) before the next
starts — far beyond ``ingest.max_lateness_slots``, so the window stage would drop
most readings as ``late``. The scoring process therefore merges the workers'
streams by *watermark* (edge/ingest/merge.py): each batch carries the highest
reading timestamp its worker has passed (a worker's own stream is in publish
order), and readings are released to the pipeline, sorted by timestamp, only up
to the minimum watermark of the workers that *bind*. A worker binds while its
process lives and either it is connected and sent a batch (or has one waiting in
its pipe) within ``ingest.merge_idle_s`` — so an idle worker holds nobody back
for longer than that, which is also the most latency the merge adds — or it is
not connected (still starting, or lost the broker, its session perhaps full of
backlog) since less than ``ingest.merge_connect_wait_s``. Held readings are
bounded by ``ingest.merge_hold_max``; above it the oldest are released ahead of
the watermark and counted (``forewarn_ingest_merge_forced_total``), never dropped
there. For QoS 1 the broker's in-flight window (``mqtt.receive_maximum`` per
worker) bounds the hold long before that: a worker whose messages are all held
is simply paused by the broker until the slower workers catch up.

Acknowledgement: a released batch goes into the pipeline's inbox as a
:class:`~edge.ingest.batch.DecodedBatch` (origin ``ingest-workers``: these workers
are a :class:`~edge.ingest.source.Source`) and lists the worker batches it carries
portions of; the pipeline hands it back to :meth:`IngestWorkers.ack` after the
readings are durable, as it does MQTT messages to the site connection, and a worker
PUBACKs the QoS 1 messages of one of its batches only when every portion of that
batch has been released and acknowledged. Held readings are never acknowledged,
so a crash or a stop of either side leaves them with the broker, which
redelivers them to the persistent shared-subscription session; the next start
merges them in order (a partly released batch may then be stored twice:
history is at-least-once and deduplicated on read).

Sparkplug B stays on the main connection: its sequence numbers and BIRTH cache
need one ordered consumer per edge node, which a shared subscription breaks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import pickle
import queue
import socket
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from edge.core.config import AgentConfig
from edge.core.errors import DecodeError
from edge.ingest.batch import DOWN, HELLO, WORKERS, DecodedBatch, merge_nonfinite
from edge.ingest.merge import WatermarkMerge
from edge.ingest.message import InboxItem
from edge.ingest.readings import Reading, Series
from edge.ingest.source import SourceHealth

__all__ = ["IngestWorkers", "shared_filters"]

log = logging.getLogger(__name__)

SHARE_GROUP = "forewarn"
_FLUSH_S = 0.002  # worker batching delay: bounded, so reordering stays a few slots


def shared_filters(subscriptions: list[str]) -> list[str]:
    return [f"$share/{SHARE_GROUP}/{s}" for s in subscriptions]


class IngestWorkers:
    """The scoring-process side: starts workers, merges their batches into the inbox."""

    name = WORKERS

    def __init__(self, cfg: AgentConfig, subscriptions: list[str],
                 inbox: queue.Queue[InboxItem], n: int) -> None:
        self.cfg, self.subscriptions, self.inbox, self.n = cfg, subscriptions, inbox, n
        self._ctx = mp.get_context("spawn")  # the agent has threads: never fork it
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscribed = 0  # worker subscriptions the broker confirmed (reconnects count)
        ing = cfg.ingest
        self.merge = WatermarkMerge(n, idle_s=ing.merge_idle_s,
                                    connect_wait_s=ing.merge_connect_wait_s,
                                    hold_max=ing.merge_hold_max,
                                    max_future_skew_s=ing.max_future_skew_s)

    def start(self) -> None:
        cfg_json = self.cfg.model_dump_json()
        now = time.monotonic()
        for s in self.merge.sources:  # a worker's connect wait starts with its process
            s.since = now
        for i in range(self.n):
            ours, theirs = self._ctx.Pipe(duplex=True)
            p = self._ctx.Process(target=_worker_main, name=f"forewarn-ingest-{i}",
                                  args=(i, cfg_json, self.subscriptions, theirs), daemon=True)
            p.start()
            theirs.close()
            self._procs.append(p)
            self._conns.append(ours)
        self._thread = threading.Thread(target=self._receive, name="forewarn-ingest-rx",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        # Readings still held by the merge are not acknowledged: the broker redelivers
        # them to the persistent sessions, and the next start merges them in order.
        self._stop.set()
        with self._send_lock:
            for c in self._conns:
                with contextlib.suppress(OSError, ValueError):
                    c.send(("stop", None))
        for p in self._procs:
            p.join(timeout)
            if p.is_alive():
                p.terminate()
        if self._thread:
            self._thread.join(timeout)

    def alive(self) -> int:
        return sum(p.is_alive() for p in self._procs)

    def health(self) -> SourceHealth:
        alive = self.alive()
        if alive == self.n:
            return SourceHealth(True)
        return SourceHealth(False, f"{self.n - alive} of {self.n} ingest worker processes "
                            "not running")

    def metric_state(self) -> list[tuple[str, str, str, float]]:
        return [
            ("forewarn_ingest_merge_held_readings",
             "Readings from ingest workers held until every worker passed their timestamp",
             "gauge", float(self.merge.held_n)),
            ("forewarn_ingest_merge_forced_total",
             "Readings released ahead of the workers' watermark because the hold buffer "
             "(ingest.merge_hold_max) was full", "counter", float(self.merge.forced)),
        ]

    def ack(self, batches: Sequence[DecodedBatch]) -> None:
        """Send ack tokens for the worker batches whose every portion is now durable."""
        parts: list[tuple[int, int]] = []
        for b in batches:
            parts.extend(b.parts)
        if parts:
            tokens = self.merge.acked(parts)
            with self._send_lock:
                for w, seqs in tokens.items():
                    with contextlib.suppress(OSError, ValueError):
                        self._conns[w].send(("ack", seqs))

    def _receive(self) -> None:
        index = {id(c): i for i, c in enumerate(self._conns)}
        conns = list(self._conns)
        merge = self.merge
        while conns and not self._stop.is_set():
            ready = wait(conns, timeout=0.05)
            now = time.monotonic()
            for c in ready:  # data waiting in a pipe: that worker is not idle
                merge.pending(index[id(c)], now)
            for c in ready:
                w = index[id(c)]
                try:
                    batch: DecodedBatch = pickle.loads(c.recv_bytes())  # type: ignore[union-attr]
                except (EOFError, OSError):
                    conns.remove(c)  # type: ignore[arg-type]
                    merge.gone(w)  # a dead worker must not hold the others back
                    continue
                if batch.seq == HELLO:
                    self.subscribed += 1
                    merge.connected(w, now)
                elif batch.seq == DOWN:
                    merge.disconnected(w, now)
                else:
                    merge.add(batch, now)
            out = merge.release(time.monotonic())
            if out is not None:
                self._put(out)

    def _put(self, batch: DecodedBatch) -> None:
        # Block rather than shed: the pipe and the worker's bounded buffer push back,
        # and for QoS 1 the broker's in-flight window stops the stream.
        while not self._stop.is_set():
            try:
                self.inbox.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue


# -- worker process -------------------------------------------------------------------------

class _Worker:
    def __init__(self, index: int, cfg: AgentConfig, subscriptions: list[str],
                 conn: Connection) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        from edge.ingest.draining_client import DrainingClient
        from edge.ingest.mqtt import max_packet_size
        from edge.ingest.router import Router
        from edge.ingest.topics import TopicMap

        self.index, self.cfg, self.conn = index, cfg, conn
        topics = TopicMap(cfg.mqtt.topics, cfg.site,
                          exclude=[cfg.mqtt.alerts_topic, cfg.mqtt.events_topic])
        self.decode = Router(topics, cfg.ingest.max_payload_bytes).decode
        self.max_pending = max(1000, cfg.ingest.queue_size // max(1, cfg.ingest.processes))
        self._lock = threading.Lock()
        self._reset()
        self.seq = 0
        self.unacked: dict[int, list[tuple[int, int]]] = {}
        self.watermark = -math.inf
        self.skew_s = cfg.ingest.max_future_skew_s
        m = cfg.mqtt
        base = m.client_id or f"forewarn-{cfg.site}"
        # The same receive path as the main connection (edge/ingest/draining_client.py).
        self.client = DrainingClient(CallbackAPIVersion.VERSION2, client_id=f"{base}-w{index}",
                                     protocol=mqtt.MQTTv5, manual_ack=True)
        self.client.max_inflight_messages_set(m.receive_maximum)
        if m.username:
            from edge.core.config import read_secret
            self.client.username_pw_set(m.username, read_secret(m.password_file))
        if m.tls:
            import ssl
            self.client.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                                certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                                keyfile=str(m.tls.key_file) if m.tls.key_file else None,
                                cert_reqs=ssl.CERT_REQUIRED)
            self.client.tls_insecure_set(m.tls.insecure)
        # No noLocal here: MQTT 5 forbids it on shared subscriptions; the agent's own
        # alert topics are excluded by the topic map instead.
        opts = SubscribeOptions(qos=m.qos)
        filters = shared_filters(subscriptions)
        self.client.on_connect = lambda c, *_: c.subscribe([(f, opts) for f in filters])
        self._hello = threading.Event()
        self._down = threading.Event()
        self.client.on_subscribe = lambda *_: self._hello.set()
        self.client.on_disconnect = lambda *_: self._down.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _nodelay
        self.client.reconnect_delay_set(int(max(1, m.reconnect_min_s)), int(m.reconnect_max_s))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = m.session_expiry_s
        props.ReceiveMaximum = m.receive_maximum
        props.MaximumPacketSize = max_packet_size(cfg.ingest.max_payload_bytes)
        self._connect_args = (m.host, m.port, m.keepalive_s, props)

    def _reset(self) -> None:
        self.keys: dict[tuple[str, str], int] = {}
        self.idx: list[int] = []
        self.ts: list[float] = []
        self.val: list[float] = []
        self.series: list[Series] = []
        self.mids: list[tuple[int, int]] = []
        self.n_msgs = self.stamped = self.shed = 0
        self.dropped: dict[str, int] = {}
        self.rejects: list[tuple[str, str, str, bytes, float]] = []
        self.nonfinite: dict[tuple[str, str], tuple[int, float]] = {}
        self.letters: list[tuple[str, str, str, bytes, float]] = []

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Decoding here is this process's whole job; DecodeError is the only
        # expected failure, anything else is caught so paho's loop never dies.
        now = time.time()
        topic, payload, qos = msg.topic, msg.payload, msg.qos
        with self._lock:
            if self.n_msgs >= self.max_pending:
                self.shed += 1
                if qos:
                    client.ack(msg.mid, qos)
                return
            self.n_msgs += 1
            if qos:
                self.mids.append((msg.mid, qos))
            try:
                res = self.decode(topic, payload, now)
            except DecodeError as exc:
                self.rejects.append((topic, exc.reason, exc.detail, payload[:256], now))
                return
            except Exception as exc:
                self.rejects.append((topic, "malformed_json", repr(exc)[:120], payload[:256],
                                     now))
                return
            if res.dropped:
                for reason, n in res.dropped.items():
                    self.dropped[reason] = self.dropped.get(reason, 0) + n
            if res.nonfinite:  # the sensor fault is raised by the scoring process
                merge_nonfinite(self.nonfinite, res.nonfinite)
                self.letters.append((topic, "non_finite", res.nonfinite_detail(),
                                     payload[:256], now))
            self.stamped += res.stamped_on_receipt
            keys = self.keys
            for r in res.items:
                if type(r) is Reading:
                    k = (r[0], r[1])
                    i = keys.get(k)
                    if i is None:
                        i = keys[k] = len(keys)
                    self.idx.append(i)
                    self.ts.append(r[2])
                    self.val.append(r[3])
                else:
                    self.series.append(r)  # type: ignore[arg-type]

    def _flush(self) -> None:
        with self._lock:
            if not self.n_msgs and not self.shed:
                return
            ts = np.asarray(self.ts)
            b = DecodedBatch(self.index, self.seq, self.n_msgs, list(self.keys),
                             np.asarray(self.idx, np.int32), ts,
                             np.asarray(self.val), self.series, self.stamped, self.dropped,
                             self.rejects, self.shed, bool(self.mids),
                             self._advance(ts, self.series), nonfinite=self.nonfinite,
                             letters=self.letters)
            if self.mids:
                self.unacked[self.seq] = self.mids
            self.seq += 1
            self._reset()
        self.conn.send_bytes(pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL))

    def _advance(self, ts: np.ndarray, series: list[Series]) -> float:
        """The watermark after this batch: its newest timestamp, clocks far ahead excluded.

        A reading the pipeline will refuse as being from the future must not carry
        this worker's watermark past every real reading of the other workers.
        """
        horizon = time.time() + self.skew_s
        wm = self.watermark
        if len(ts):
            newest = float(ts.max())
            if newest > horizon:
                ok = ts[ts <= horizon]
                newest = float(ok.max()) if len(ok) else -math.inf
            wm = max(wm, newest)
        for x in series:
            last = x.t0 + x.dt * (len(x.values) - 1)
            if last <= horizon:
                wm = max(wm, last)
        self.watermark = wm
        return wm

    def run(self) -> None:
        host, port, keepalive, props = self._connect_args
        try:
            self.client.connect(host, port, keepalive, clean_start=False, properties=props)
        except OSError:
            self.client.connect_async(host, port, keepalive, clean_start=False,
                                      properties=props)
        self.client.loop_start()
        try:
            while True:
                if self.conn.poll(_FLUSH_S):
                    kind, arg = self.conn.recv()
                    if kind == "stop":
                        break
                    for seq in arg:
                        for mid, qos in self.unacked.pop(seq, ()):
                            self.client.ack(mid, qos)
                self._flush()
                # Notes after the flush: what arrived before a disconnect goes out first.
                if self._down.is_set():
                    self._down.clear()
                    self.conn.send_bytes(pickle.dumps(DecodedBatch(self.index, DOWN, 0)))
                if self._hello.is_set():
                    self._hello.clear()
                    self.conn.send_bytes(pickle.dumps(DecodedBatch(self.index, HELLO, 0)))
        except (EOFError, OSError, KeyboardInterrupt):
            pass  # the scoring process is gone: unacked messages will be redelivered
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _worker_main(index: int, cfg_json: str, subscriptions: list[str], conn: Connection) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us through the pipe
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cfg = AgentConfig.model_validate_json(cfg_json)
    _Worker(index, cfg, subscriptions, conn).run()
