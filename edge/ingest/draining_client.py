"""A paho client that reads everything the socket holds per wake-up, not one packet.

Stock paho 2 handles one incoming packet per ``select()`` (``loop_read`` reads
``len(out) + len(in)`` packets, i.e. one at QoS 0) and spends three or more
``recv()`` calls on each (command byte, length bytes, body). Under a flood of
small messages that per-packet overhead, not decoding, is what lets one
publisher outrun the agent, and good readings queue behind the junk in the
broker (docs/architecture.md, ingest). This subclass

- reads the socket in 64 KiB chunks and serves paho's small reads from that
  buffer (one syscall per many packets), and
- handles up to ``burst`` packets per wake-up, so writes (acks, alerts) still
  go out between bursts,
- asks ``admit(topic)`` before building a message, so a quarantined topic
  (edge/ingest/quarantine.py) costs a header parse, not a callback, and
- skips the MQTT 5 properties of an incoming QoS 0/1 PUBLISH instead of
  building a ``Properties`` object for each (about 40 % of paho's per-message
  CPU in a profile). The agent reads no publish property, and it announces no
  Topic Alias Maximum, so the broker sends no topic aliases it would need.
- acknowledges a plain successful PUBACK (the agent's own QoS 1 alerts) without
  paho's ``ReasonCode`` and ``Properties`` objects: in a GIL profile at 1,000
  msg/s with 400 alert changes a second, that was half of the network thread's
  time, and every microsecond it holds the GIL delays the pipeline, and
- lets the thread that publishes an alert write it to the socket itself
  (:meth:`send_now`, plain TCP only), instead of waking the network thread to do
  it: that wake-up waited for the GIL behind the pipeline's next batch.

It overrides ``loop_read`` (public), and ``_sock_recv``/``_loop``/``reconnect``/
``_handle_publish``/``_handle_pubackcomp``/``_packet_write`` of paho 2.x, and reads
``_out_packet``, ``_out_messages`` and ``_inflight_messages``.
tests/integration/test_draining_client.py checks it against a real broker, so a
paho upgrade that changes these internals fails loudly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

READ_CHUNK = 65_536


class DrainingClient(mqtt.Client):
    def __init__(self, *args: Any, burst: int = 64,
                 admit: Callable[[str], bool] | None = None,
                 on_shed: Callable[[int], None] | None = None,
                 on_burst_end: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._burst = burst
        self._on_burst_end = on_burst_end
        self._admit = admit
        self._on_shed = on_shed
        self._shed = 0
        self._rbuf = b""
        self._rpos = 0
        # True while on_burst_end runs for a burst that emptied the socket (it ended
        # on EAGAIN, not on the burst limit): nothing more is waiting to be read.
        self.drained = False
        # Serialises writers: paho's network thread and a thread in send_now().
        self._wlock = threading.Lock()

    def _buffered(self) -> int:
        return len(self._rbuf) - self._rpos

    def reconnect(self) -> MQTTErrorCode:
        # Bytes left from a lost connection must never be parsed as the new one's.
        self._rbuf, self._rpos = b"", 0
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:  # includes b"" (connection closed): paho handles it
                self._rbuf, self._rpos = b"", 0
                return data
            buf, pos = data, 0
        out = buf[pos:pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        try:
            for _ in range(max(max_packets, self._burst)):
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    self.drained = not self._buffered()
                    break
        finally:
            # The burst's messages are handed over once, however the burst ended.
            try:
                if self._on_burst_end is not None:
                    self._on_burst_end()
            finally:
                self.drained = False
        if self._shed and self._on_shed is not None:
            self._on_shed(self._shed)  # one metric update per burst, not per message
            self._shed = 0
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        # select() cannot see bytes already in our buffer: consume them first, and
        # do not sleep in select() while some are left.
        if self._buffered() and self._sock is not None:
            rc = self.loop_read()
            if rc or self._sock is None:
                return rc
            if self._buffered():
                timeout = 0.0
        return super()._loop(timeout)

    def _packet_write(self) -> MQTTErrorCode:
        with self._wlock:
            return super()._packet_write()

    def send_now(self) -> None:
        """Write the queued PUBLISH and PUBACK packets from this thread, if it can at once.

        Only on a plain TCP socket: OpenSSL does not allow one thread to write an
        SSL object while paho's network thread reads it. Whatever is not written
        here (the link is down, the socket buffer is full, another thread is
        writing, or the queue holds another packet type, e.g. DISCONNECT, whose
        side effects are paho's) stays queued for the network thread, which
        paho woke when the packet was queued.
        """
        sock = self._sock
        if type(sock) is not socket.socket or self.on_publish is not None:
            return
        if not self._wlock.acquire(blocking=False):
            return
        try:
            out = self._out_packet
            sent = False
            while out:
                packet = out[0]
                command = packet["command"] & 0xF0
                if command != mqtt.PUBLISH and command != mqtt.PUBACK:
                    break
                try:
                    n = sock.send(memoryview(packet["packet"])[packet["pos"]:])
                except OSError:  # includes a full buffer; a lost link is paho's to handle
                    break
                sent = True
                packet["pos"] += n
                packet["to_process"] -= n
                if packet["to_process"] > 0:
                    break
                out.popleft()
                info = packet["info"]
                if command == mqtt.PUBLISH and packet["qos"] == 0 and info is not None:
                    info._set_as_published()
            if sent:
                with self._msgtime_mutex:  # what paho's keepalive reads
                    self._last_msg_out = mqtt.time_func()
        finally:
            self._wlock.release()

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet: bytearray = self._in_packet["packet"]
        # A success is two bytes (MQTT 3.1.1, or 5 with the reason omitted), or in 5 a
        # reason below 0x80 (e.g. 0x10, no subscribers) with no properties. A failure
        # or properties take paho's full path.
        plain = len(packet) == 2 or (
            self._protocol == MQTTProtocolVersion.MQTTv5 and len(packet) in (3, 4)
            and packet[2] < 0x80 and (len(packet) == 3 or packet[3] == 0))
        if cmd != "PUBACK" or not plain or self.on_publish is not None:
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet[0:2], "big")
        # What paho's _do_on_publish does once no on_publish callback is set.
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            msg.info._set_as_published()
            if msg.qos > 0:
                self._inflight_messages -= 1
                if self._max_inflight_messages > 0:
                    return self._update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2:  # never at the agent's subscription QoS; paho's own path
            return super()._handle_publish()
        packet: bytearray = self._in_packet["packet"]
        try:
            pos = 2 + int.from_bytes(packet[0:2], "big")
            topic = packet[2:pos]
            mid = 0
            if qos:
                mid = int.from_bytes(packet[pos:pos + 2], "big")
                pos += 2
            if self._protocol == MQTTProtocolVersion.MQTTv5:
                pos = _skip_properties(packet, pos)
            elif not topic:
                raise MalformedPacket("topic can't be empty in MQTTv3")
            if pos > len(packet):
                raise MalformedPacket("PUBLISH headers run past the packet")
        except IndexError as exc:
            raise MalformedPacket("PUBLISH shorter than its headers") from exc
        if self._admit is not None and not self._admitted(topic):
            self._shed += 1
            # Deliberately shed: acknowledged so it is neither redelivered nor
            # holding a slot of the in-flight window.
            return self._send_puback(mid) if qos == 1 else MQTTErrorCode.MQTT_ERR_SUCCESS
        # paho annotates topic as bytes but only ever decodes it; a bytearray slice
        # of the read buffer saves a copy per message.
        message = mqtt.MQTTMessage(mid=mid, topic=cast(bytes, topic))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = packet[pos:]
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _admitted(self, topic: bytes | bytearray) -> bool:
        assert self._admit is not None
        try:
            return self._admit(topic.decode())
        except UnicodeDecodeError:
            return True  # the decoder rejects (and counts) it as usual


def _skip_properties(packet: bytes | bytearray, pos: int) -> int:
    """Position after the property section that starts at ``pos``."""
    length, mult = 0, 1
    for _ in range(4):  # a variable byte integer has at most four bytes
        b = packet[pos]  # IndexError when the packet ends early
        pos += 1
        length += (b & 127) * mult
        mult *= 128
        if not b & 128:
            return pos + length
    raise MalformedPacket("PUBLISH property length longer than 4 bytes")
