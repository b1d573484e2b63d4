#!/usr/bin/env python3
"""A DDN1 client written from docs/protocol.md only (no project code): paho-mqtt + the standard library.

Sends one request per sample of a features file to the stage's request topic, waits for every reply
by id, and prints one JSON line per request: what was sent (so the caller can check the encoding)
and the reply header. With --probes it also sends requests that must fail with a given error code.

usage: python_client.py --host H --port P --bundle DIR --stage K --features FILE
                        [--dtype f32|f16|u8q] [--compression none|deflate|sparse] [--probes]
features file: {"shape": [per-sample dims], "samples": [[flat values], ...]}
"""

import argparse
import hashlib
import json
import struct
import sys
import threading
import time
import uuid
import zlib

import paho.mqtt.client as mqtt


def frame(header, body=b""):
    h = json.dumps(header).encode("utf-8")
    return b"DDN1" + struct.pack("<I", len(h)) + h + body


def unframe(payload):
    if len(payload) < 8 or payload[:4] != b"DDN1":
        raise ValueError("not a DDN1 frame")
    (n,) = struct.unpack_from("<I", payload, 4)
    if 8 + n > len(payload):
        raise ValueError("header runs past the end of the frame")
    return json.loads(payload[8 : 8 + n].decode("utf-8")), payload[8 + n :]


def encode(values, dtype, compression):
    """Body bytes and the header fields that describe them (docs: 'Tensor body')."""
    fields = {"dtype": dtype, "compression": compression}
    if dtype == "f32":
        raw = struct.pack(f"<{len(values)}f", *values)
    elif dtype == "f16":
        raw = struct.pack(f"<{len(values)}e", *values)
    elif dtype == "u8q":
        lo, hi = min(0.0, min(values)), max(0.0, max(values))
        scale = (hi - lo) / 255 if hi > lo else 1.0
        zero = min(255, max(0, round(-lo / scale)))
        raw = bytes(min(255, max(0, round(v / scale) + zero)) for v in values)
        fields.update(scale=scale, zero=zero)
    else:
        raise ValueError(f"unknown dtype {dtype}")
    if compression == "deflate":
        body = zlib.compress(raw)
    elif compression == "sparse":
        body = sparse(raw)
    else:
        body = raw
    return raw, body, fields


def sparse(raw):
    """docs: 'compression: "sparse"': a bitmap of the non-zero bytes, then those bytes."""
    bits = bytearray((len(raw) + 7) // 8)
    for i, b in enumerate(raw):
        if b:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits) + bytes(b for b in raw if b)


def connect(host, port, reply_topic, on_message):
    subscribed = threading.Event()
    try:  # paho-mqtt 2.x
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    except AttributeError:  # paho-mqtt 1.x (Debian 12)
        client = mqtt.Client(protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *args: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    if not subscribed.wait(10):
        sys.exit("could not subscribe to the reply topic")
    return client


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--bundle", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument("--stage", type=int, required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--compression", default="none")
    p.add_argument("--deadline-ms", type=int, default=5000)
    p.add_argument("--probes", action="store_true")
    a = p.parse_args()

    raw_manifest = open(f"{a.bundle}/ddnn.json", "rb").read()
    manifest = json.loads(raw_manifest)
    digest = hashlib.sha256(raw_manifest).hexdigest()
    model = f"{a.namespace}/{manifest['name']}"
    stage_name = manifest["stages"][a.stage]["name"]
    request_topic = f"ddnn/{model}/{stage_name}/req"
    session = uuid.uuid4().hex[:8]
    reply_topic = f"ddnn/{model}/reply/py-{session}"
    features = json.load(open(a.features))
    per_sample = features["shape"]

    replies, lock, all_in = {}, threading.Lock(), threading.Event()
    expected = set()

    def on_message(client, userdata, msg):
        try:
            header, _ = unframe(msg.payload)
        except ValueError:
            return
        with lock:
            rid = header.get("id")
            if rid in expected and rid not in replies:  # first reply per id; ignore others
                replies[rid] = header
                if len(replies) == len(expected):
                    all_in.set()

    client = connect(a.host, a.port, reply_topic, on_message)

    def request(rid, values, **overrides):
        raw, body, fields = encode(values, a.dtype, a.compression)
        header = {
            "kind": "infer",
            "id": rid,
            "model": model,
            "digest": digest,
            "stage": a.stage,
            "replyTo": reply_topic,
            "deadline": int(time.time() * 1000) + a.deadline_ms,
            "sentAt": int(time.time() * 1000),
            "shape": [1, *per_sample],
            **fields,
        }
        header.update(overrides)
        return raw, fields, frame(header, body)

    outgoing = []  # (record, frame bytes)
    for i, values in enumerate(features["samples"]):
        rid = f"py-{session}-{i}"
        raw, fields, data = request(rid, values)
        sent = {"dtype": fields["dtype"], "raw_hex": raw.hex()}
        if "scale" in fields:
            sent.update(scale=fields["scale"], zero=fields["zero"])
        outgoing.append(({"index": i, "id": rid, "sent": sent}, data))
    if a.probes:
        first = features["samples"][0]
        probes = {
            "digest_mismatch": {"digest": "0" * 64},
            "unknown_model": {"model": f"{a.namespace}/no-such-model"},
            "deadline_exceeded": {"deadline": int(time.time() * 1000) - 1000},
            "bad_frame": {"shape": [1, *per_sample[:-1], per_sample[-1] + 1]},
        }
        for code, overrides in probes.items():
            rid = f"py-{session}-probe-{code}"
            _, _, data = request(rid, first, **overrides)
            outgoing.append(({"probe": code, "id": rid}, data))
    with lock:
        expected.update(record["id"] for record, _ in outgoing)
    for _, data in outgoing:
        client.publish(request_topic, data, qos=1)
    all_in.wait(a.deadline_ms / 1000 + 2)
    client.disconnect()
    client.loop_stop()

    missing = 0
    with lock:
        for record, _ in outgoing:
            record["reply"] = replies.get(record["id"])
            missing += record["reply"] is None
            print(json.dumps(record))
    if missing:
        sys.exit(f"{missing} request(s) got no reply")


if __name__ == "__main__":
    main()
