"""The obvious agent: paho callback -> json.loads -> onnxruntime per message -> publish.

Keeps the last ``window`` values per (asset, signal) topic and, once full, runs
the model on that one window and publishes the score. Prints messages/s.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--bundle", required=True)
ap.add_argument("--count", type=int, default=0)
ap.add_argument("--timeout", type=float, default=60)
ap.add_argument("--setup", action="store_true", help="create the session and leave")
a = ap.parse_args()
with open(f"{a.bundle}/manifest.json") as f:
    manifest = json.load(f)
win, n_sig = manifest["window"], len(manifest["signals"])
sess = ort.InferenceSession(f"{a.bundle}/model.onnx", providers=["CPUExecutionProvider"])
buf: dict[str, collections.deque[float]] = collections.defaultdict(
    lambda: collections.deque(maxlen=win))
seen, first, done = [0], [0.0], threading.Event()


def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
    if not seen[0]:
        first[0] = time.perf_counter()
    seen[0] += 1
    d = buf[msg.topic]
    d.append(json.loads(msg.payload)["value"])
    if len(d) == win:
        x = np.tile(np.asarray(d, dtype=np.float32), (1, n_sig, 1))
        score = sess.run(None, {"window": x})[0]
        client.publish("naive/" + msg.topic, str(float(score.ravel()[0])))
    if seen[0] == a.count:
        done.set()


c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive", clean_session=False)
c.on_message = on_message
c.on_connect = lambda c, *_: c.subscribe("forewarn/#", 0)
c.connect("127.0.0.1", a.port)
c.loop_start()
if a.setup:
    time.sleep(0.3)
else:
    done.wait(a.timeout)
    print(seen[0] / (time.perf_counter() - first[0]))
c.disconnect()
c.loop_stop()
