"""The hot loop: decode -> window -> score -> alerts | store | drift, then acknowledge.

One thread drains the ingest queue in batches, so decoding, windowing and
inference are amortised over many messages and the model sees batches of
windows across assets. When the stream is quiet enough that the queue is empty
and that thread idle, the site broker's network thread hands a burst that
emptied its socket to :meth:`Pipeline.try_inline` and handles it itself, up to
the durable alert and its publish: one thread, as in the bare durable loop, with
no hand-over that waits for the GIL behind another thread (docs/architecture.md,
ingest). A longer queue, or a burst cut at its limit, takes the batch path, so a
backlog still drains in large batches.

An inbox item is a raw :class:`Message` (decoded here by the router), a burst of
them, or a :class:`DecodedBatch` a source decoded itself (unpacked here: its
messages, sheds, rejects and dead letters counted). Items are acknowledged to
their :class:`~edge.ingest.source.Source` only after the readings they carried
are durable in the local store (or, with storage off, processed): raw messages
to the site broker's, a batch to the source its ``origin`` names.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from edge.alerts.limits import LimitSample
from edge.core.errors import DecodeError, StorageError
from edge.core.metrics import Metrics
from edge.ingest.batch import DecodedBatch
from edge.ingest.decode import DecodeResult
from edge.ingest.message import RAW_ORIGIN, InboxItem, Message, MessageQueue
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.readings import Reading, Series
from edge.ingest.source import Source
from edge.models.infer import ScoredWindow, Scorer
from edge.models.rollout import Rollout
from edge.scoring.ranges import FAULT, HIGH, LOW, OK, SignalBounds, repair
from edge.scoring.window import WindowSet

log = logging.getLogger(__name__)

Decoder = Callable[[str, bytes, float], DecodeResult]


class ScoreSink(Protocol):
    def on_scores(self, windows: list[ScoredWindow]) -> object: ...


class LimitSink(Protocol):
    """Takes readings outside their ranges (edge.alerts.manager.AlertManager)."""

    @property
    def limit_watch(self) -> set[tuple[str, str]]: ...
    def on_readings(self, samples: Sequence[LimitSample]) -> object: ...


class ReadingStore(Protocol):
    def add(self, readings: Sequence[Reading | Series]) -> None: ...
    def due(self) -> bool: ...
    def flush(self) -> int: ...


class Pipeline:
    def __init__(
        self,
        inbox: queue.Queue[InboxItem],
        decode: Decoder,
        windows: WindowSet,
        scorer: Scorer,
        metrics: Metrics,
        *,
        sinks: Sequence[ScoreSink] = (),
        store: ReadingStore | None = None,
        sources: Mapping[str, Source] | None = None,
        on_reject: Callable[[Message, DecodeError], None] | None = None,
        batch_max: int = 512,
        bounds: dict[str, SignalBounds] | None = None,
        limits: LimitSink | None = None,
        ack_every: int = 500,
        on_idle: Sequence[Callable[[], object]] = (),
        state_signal: str | None = None,
        on_state: Callable[[str, float], None] | None = None,
        max_future_skew_s: float = 300.0,
    ) -> None:
        self.inbox = inbox
        self.decode = decode
        self.windows = windows
        self.scorer = scorer
        self.metrics = metrics
        self.sinks = list(sinks)
        self.store = store
        # Raw messages are acknowledged to sources[RAW_ORIGIN], a batch to its origin
        # (the mapping is read at each ack: a source may be registered after this).
        self.sources: Mapping[str, Source] = sources if sources is not None else {}
        self.on_reject = on_reject
        self.batch_max = batch_max
        self.ack_every = ack_every
        self.on_idle = list(on_idle)
        self.state_signal = state_signal
        self.max_future_skew_s = max_future_skew_s
        self.on_state = on_state
        self.bounds = dict(bounds or {})
        self.limits = limits
        self.heartbeats: dict[str, float] = {"pipeline": time.monotonic()}
        self.scored_total = 0
        self.last_reading_at: float | None = None  # monotonic; for /healthz's silence rule
        self._pending_ack: list[Message] = []  # raw messages, for sources[RAW_ORIGIN]
        self._pending_batches: list[DecodedBatch] = []  # for the source of their origin
        self._pending_qos1 = 0  # only QoS 1 messages wait on a flush for their ack
        self._ratelog = RateLimitedLog(log, 60.0)
        self._seen_dropped: dict[str, int] = {}
        self._error_children: dict[str, Any] = {}
        self._seen_skipped: dict[str, int] = {}
        self._lettered: Message | DecodedBatch | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # One batch at a time, whichever thread runs it (this one or try_inline's).
        self._run_lock = threading.Lock()
        self._local = threading.local()  # .inline: this thread is in try_inline
        self._swap_lock = threading.Lock()
        self.rollout: Rollout | None = None
        self.breached: Callable[[float], bool] = lambda score: False

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forewarn-pipeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        self._drain_once(block=False)
        with self._run_lock:
            self.windows.flush_idle()
            self._score(self.windows.drain())
            self._flush_and_ack(force=True)
        for sink in self.sinks:
            flush = getattr(sink, "flush", None)  # e.g. alerts synced and published
            if flush is not None:
                flush()

    def swap_scorer(self, scorer: Scorer, windows: WindowSet | None = None) -> None:
        """Switch models between two batches: at a window boundary, no window lost or twice.

        A new grid (other signals, period, window or hop) needs new buffers: pass them;
        the data buffered for the old grid is then not scored (a counted restart).
        """
        with self._swap_lock:
            self.scorer = scorer
            if windows is not None:
                self.windows.skipped["grid_change"] += len(self.windows.assets)
                self.windows = windows

    def set_bounds(self, bounds: dict[str, SignalBounds]) -> None:
        """The ranges of a newly activated model (between two batches)."""
        with self._swap_lock:
            self.bounds = dict(bounds)

    def set_rollout(self, rollout: Rollout | None, breached: Callable[[float], bool]) -> None:
        with self._swap_lock:
            self.rollout = rollout
            self.breached = breached

    # -- loop ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain_once(block=True)
            except Exception:  # the hot loop must survive any one bad batch
                log.exception("pipeline batch failed; continuing")
            self.heartbeats["pipeline"] = time.monotonic()

    def try_inline(self, msgs: list[Message]) -> bool:
        """Process ``msgs`` in the calling thread if nothing is queued or in progress.

        True when done here; False (nothing done) when they must be queued as usual:
        the queue holds or the pipeline thread is handling an earlier item, or the
        pipeline is stopping. A history flush that falls due is left to the pipeline
        thread's next idle turn, so this thread, which reads the socket, never waits
        for one.
        """
        inbox = self.inbox
        if not isinstance(inbox, MessageQueue) or not self._run_lock.acquire(blocking=False):
            return False
        try:
            if self._stop.is_set() or not inbox.idle():
                return False
            self._local.inline = True
            try:
                self.process(msgs, flush=False)
            except Exception:  # as in the pipeline thread: one bad batch stops nothing
                log.exception("pipeline batch failed; continuing")
            finally:
                self._local.inline = False
            return True
        finally:
            self._run_lock.release()

    def inline_active(self) -> bool:
        """Whether the calling thread is in :meth:`try_inline` (the alert manager then
        syncs and publishes in it, not through its syncer thread)."""
        return bool(getattr(self._local, "inline", False))

    def _drain_once(self, block: bool) -> None:
        items: list[Message | DecodedBatch] = []
        taken = 0
        # An item is one message, one socket burst of them, or one decoded batch.
        try:
            item = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            while True:
                taken += 1
                if isinstance(item, list):
                    items.extend(item)
                else:
                    items.append(item)
                if len(items) >= 4096:
                    break
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        try:
            with self._run_lock:
                if items:
                    self.process(items)
                else:
                    self.windows.flush_idle()
                    self._score(self.windows.drain())
                    self._flush_and_ack(force=False)
                    for job in self.on_idle:
                        job()
        finally:
            if taken and isinstance(self.inbox, MessageQueue):
                self.inbox.done(taken)

    def process(self, msgs: Sequence[Message | DecodedBatch], *, flush: bool = True) -> None:
        """One batch. ``flush=False``: a history flush that is due waits for the next call
        that allows one (its acknowledgements with it)."""
        accepted: list[Reading | Series] = []
        samples: list[LimitSample] = []
        bounds = self.bounds
        # Pairs with an active limit or sensor-fault alarm: their good readings clear it.
        watch = self.limits.limit_watch if self.limits is not None else None
        n_readings = 0
        stamped = 0
        n_msgs = len(msgs)
        batches = False
        for m in msgs:
            if isinstance(m, DecodedBatch):
                res = self._unpack(m)
                n_msgs += m.n_messages - 1
                batches = True
            else:
                try:
                    res = self.decode(m.topic, m.payload, m.received)
                except DecodeError as exc:
                    self._decode_error(exc.reason).inc()
                    if self.on_reject:
                        self.on_reject(m, exc)
                    continue
            if res.dropped:
                for reason, n in res.dropped.items():
                    self._decode_error(reason).inc(n)
            if res.nonfinite:
                self._non_finite(m, res, samples)
            stamped += res.stamped_on_receipt
            horizon = m.received + self.max_future_skew_s
            for r in res.items:
                last_ts = r.t0 + r.dt * (len(r.values) - 1) if isinstance(r, Series) else r.ts
                if last_ts > horizon:
                    # A clock far ahead would close every slot before it: refuse, count.
                    self.metrics.readings_dropped.labels("future").inc(
                        len(r.values) if isinstance(r, Series) else 1)
                    continue
                if r.signal == self.state_signal and self.on_state is not None:
                    # The operating state is context for the alert rules, not model input.
                    last = float(r.values[-1]) if isinstance(r, Series) else r.value
                    self.on_state(r.asset, last)
                    accepted.append(r)
                    continue
                b = bounds.get(r.signal) if bounds else None
                if b is not None:
                    n_readings += self._checked(r, b, m, accepted, samples)
                elif isinstance(r, Series):
                    self.windows.add_series(r.asset, r.signal, r.t0, r.dt, r.values)
                    accepted.append(r)
                    n_readings += len(r.values)
                    if watch and (r.asset, r.signal) in watch:  # a NaN alarm, no bounds
                        samples.extend(LimitSample(r.asset, r.signal, r.t0 + r.dt * i, v, OK)
                                       for i, v in enumerate(r.values.tolist()))
                else:
                    self.windows.add_point(r.asset, r.signal, r.ts, r.value)
                    accepted.append(r)
                    n_readings += 1
                    if watch and (r.asset, r.signal) in watch:
                        samples.append(LimitSample(r.asset, r.signal, r.ts, r.value, OK))
        if samples and self.limits is not None:
            try:
                self.limits.on_readings(samples)
            except Exception:  # alerting must not stop ingest; the readings are kept
                log.exception("limit alerts failed for %d readings", len(samples))
        self._score(self.windows.drain())
        # Counted once the batch's alerts are out (an opening's event waits for nothing else).
        if stamped:
            self.metrics.stamped_on_receipt.inc(stamped)
        self.metrics.messages_received.inc(n_msgs)
        self.metrics.readings_received.inc(n_readings)
        if n_readings:
            self.last_reading_at = time.monotonic()
        self._sync_window_counters()
        if self.store is not None and accepted:
            self.store.add(accepted)
        # Profiling: counting QoS 0 messages here forced a store flush (one fsync'd
        # file per asset) every ack_every messages though nothing waits to be acked.
        if not batches:  # the common case: raw messages only, no second pass
            raw = cast("Sequence[Message]", msgs)
            self._pending_ack.extend(raw)
            self._pending_qos1 += sum(m.qos > 0 for m in raw)
        else:
            for m in msgs:
                if isinstance(m, DecodedBatch):
                    self._pending_batches.append(m)
                    self._pending_qos1 += m.needs_ack
                else:
                    self._pending_ack.append(m)
                    self._pending_qos1 += m.qos > 0
        if flush or self.store is None:
            self._flush_and_ack(force=False)

    def _unpack(self, b: DecodedBatch) -> DecodeResult:
        """A source's decoded batch: count what it shed and refused, dead-letter, unpack."""
        if b.shed:
            self.metrics.queue_dropped.inc(b.shed)
        for topic, reason, detail, head, received in b.rejects:
            self._decode_error(reason).inc()
            if self.on_reject:
                self.on_reject(Message(topic, head, received, 0, 0), DecodeError(reason, detail))
        if self.on_reject:
            for topic, reason, detail, head, received in b.letters:  # counted in b.dropped
                self.on_reject(Message(topic, head, received, 0, 0), DecodeError(reason, detail))
        return b.to_result()

    def _decode_error(self, reason: str) -> Any:
        """The labelled child, cached: labels() costs more than the increment itself."""
        child = self._error_children.get(reason)
        if child is None:
            child = self._error_children[reason] = self.metrics.decode_errors.labels(reason)
        return child

    def _sync_window_counters(self) -> None:
        """Export the window stage's plain counters as Prometheus deltas."""
        for source, seen, metric in ((self.windows.dropped, self._seen_dropped,
                                      self.metrics.readings_dropped),
                                     (self.windows.skipped, self._seen_skipped,
                                      self.metrics.windows_skipped)):
            for reason, n in source.items():
                delta = n - seen.get(reason, 0)
                if delta:
                    metric.labels(reason).inc(delta)
                    seen[reason] = n

    def _checked(self, r: Reading | Series, b: SignalBounds, m: Message | DecodedBatch,
                 accepted: list[Reading | Series], samples: list[LimitSample]) -> int:
        """Window and keep a reading checked against its ranges; returns readings kept.

        Outside the training range: kept (clipped for the model when the manifest
        says so) and reported for a limit alert. Physically impossible: a sensor
        fault, reported, counted, dead-lettered with its message, and left out of
        the window and the history; the message's other readings are kept.
        """
        watched = self.limits is not None and (r.asset, r.signal) in self.limits.limit_watch
        if isinstance(r, Series):
            codes = b.codes(r.values)
            if not codes.any():
                self.windows.add_series(r.asset, r.signal, r.t0, r.dt, r.values)
                accepted.append(r)
                if watched:
                    samples.extend(LimitSample(r.asset, r.signal, r.t0 + r.dt * i, v, OK)
                                   for i, v in enumerate(r.values.tolist()))
                return len(r.values)
            self.windows.add_series(r.asset, r.signal, r.t0, r.dt, repair(r.values, codes, b))
            ts = [r.t0 + r.dt * i for i in range(len(r.values))]
            values, verdicts = r.values.tolist(), codes.tolist()
            samples.extend(LimitSample(r.asset, r.signal, t, v, c)
                           for t, v, c in zip(ts, values, verdicts, strict=True))
            faults = verdicts.count(FAULT)
            if faults:
                accepted.extend(Reading(r.asset, r.signal, t, v)
                                for t, v, c in zip(ts, values, verdicts, strict=True)
                                if c != FAULT)
                first = verdicts.index(FAULT)
                self._fault(m, r.asset, r.signal, values[first], b, faults)
            else:
                accepted.append(r)
            self._outside(verdicts.count(LOW), verdicts.count(HIGH))
            return len(values) - int(faults)
        c = b.code(r.value)
        if c == FAULT:
            samples.append(LimitSample(r.asset, r.signal, r.ts, r.value, c))
            self._fault(m, r.asset, r.signal, r.value, b, 1)
            return 0
        if c == OK:
            self.windows.add_point(r.asset, r.signal, r.ts, r.value)
            if watched:
                samples.append(LimitSample(r.asset, r.signal, r.ts, r.value, c))
        else:
            v = min(max(r.value, b.low), b.high) if b.clip else r.value
            self.windows.add_point(r.asset, r.signal, r.ts, v)
            samples.append(LimitSample(r.asset, r.signal, r.ts, r.value, c))
            self._outside(int(c == LOW), int(c == HIGH))
        accepted.append(r)
        return 1

    def _non_finite(self, m: Message | DecodedBatch, res: DecodeResult,
                    samples: list[LimitSample]) -> None:
        """NaN/Inf from a sensor: the model cannot judge it, so a person must see it.

        Each (asset, signal) with non-finite values becomes one sensor-fault sample
        (the alarm opens once and its evidence says "no number"); the message is
        dead-lettered once, and its finite values are kept as usual. Only signals the
        model, the ranges or the state rule use: a name nobody reads raises nothing.
        """
        nonfinite = res.nonfinite or {}
        if self.limits is not None:
            known, bounds = self.windows.index, self.bounds
            for (asset, signal), (_, ts) in nonfinite.items():
                if signal in known or signal in bounds or signal == self.state_signal:
                    samples.append(LimitSample(asset, signal, ts, math.nan, FAULT))
        if self.on_reject is not None and not res.lettered and m is not self._lettered:
            self._lettered = m  # one dead letter per message, however many faults it had
            self.on_reject(_letter(m), DecodeError("non_finite", res.nonfinite_detail()))

    def _outside(self, low: int, high: int) -> None:
        if low:
            self.metrics.readings_outside_training.labels("low").inc(low)
        if high:
            self.metrics.readings_outside_training.labels("high").inc(high)

    def _fault(self, m: Message | DecodedBatch, asset: str, signal: str, value: float,
               b: SignalBounds, n: int) -> None:
        self.metrics.readings_dropped.labels("implausible").inc(n)
        if self.on_reject is not None and m is not self._lettered:
            self._lettered = m  # one dead letter per message, however many faults it had
            # The message itself is kept: the dead letter records what was taken out.
            self.on_reject(_letter(m), DecodeError(
                "implausible", f"{asset}/{signal} = {value:g} {b.unit} outside the plausible "
                f"range [{b.plausible_low:g}, {b.plausible_high:g}] ({n} in this message)"))

    def _score(self, ready: list) -> None:  # type: ignore[type-arg]
        if not ready:
            return
        with self._swap_lock:
            scorer, rollout = self.scorer, self.rollout
        t0 = time.perf_counter()
        try:
            if rollout is None:
                scored = scorer.score(ready, self.batch_max)
            else:
                scored = rollout.score(ready, scorer, self.batch_max, self.breached)
        except Exception:
            self.metrics.inference_errors.inc()
            log.exception("inference failed on %d windows of %s", len(ready), scorer.ident)
            return
        took = time.perf_counter() - t0
        finite = [s for s in scored if math.isfinite(s.score)]
        for sink in self.sinks:
            try:
                sink.on_scores(finite)
            except Exception:
                log.exception("score sink %s failed", type(sink).__name__)
        # Counted after the sinks: an opening's durable event waits for them, not for this.
        self.metrics.inference_seconds.observe(took)
        if len(finite) != len(scored):
            self.metrics.inference_errors.inc(len(scored) - len(finite))
        self.metrics.windows_scored.inc(len(finite))
        self.scored_total += len(finite)

    def _flush_and_ack(self, force: bool) -> None:
        if not (self._pending_ack or self._pending_batches):
            return
        if self.store is not None:
            if not (force or self.store.due() or self._pending_qos1 >= self.ack_every):
                return
            try:
                self.store.flush()
            except StorageError as exc:
                # Scoring and alerting go on; the store bounds and counts what it sheds.
                log.warning("storage paused: %s", exc)
        raw, self._pending_ack = self._pending_ack, []
        batches, self._pending_batches = self._pending_batches, []
        self._pending_qos1 = 0
        if raw:
            self._ack(RAW_ORIGIN, raw)
        if batches:
            by_origin: dict[str, list[DecodedBatch]] = {}
            for b in batches:  # delivery order kept within each source
                by_origin.setdefault(b.origin, []).append(b)
            for origin, bs in by_origin.items():
                self._ack(origin, bs)

    def _ack(self, origin: str, items: Sequence[Message] | Sequence[DecodedBatch]) -> None:
        source = self.sources.get(origin)
        if source is None:
            if self.sources:  # a pipeline without sources (replay, tests) acks nothing
                self._ratelog.warning(f"ack:{origin}", "no source named %r to acknowledge "
                                      "%d items to", origin, len(items))
            return
        source.ack(items)


def _letter(m: Message | DecodedBatch) -> Message:
    """What a dead letter of one of the item's readings names (a batch has no raw message)."""
    if isinstance(m, DecodedBatch):
        return Message(m.letter_topic, b"", m.received, 0, 0)
    return m
