"""Packet delay and loss where the kernel has no sch_netem: an NFQUEUE listener (netfilter's
userspace queue, stdlib only) that holds each queued packet for delay +- jitter (uniform, like
netem without a distribution table, so packets may reorder as they do under netem) and drops a
`loss` fraction of them. Run inside the network namespace whose iptables rules queue to it;
prints one JSON line of counts when it gets SIGTERM.

usage: netem-queue.py QUEUE DELAY_MS JITTER_MS LOSS SEED
"""
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_COPY_META = 1
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def message(kind: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    body = nfgen + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def main() -> None:
    queue, delay, jitter, loss, seed = (
        int(sys.argv[1]),
        float(sys.argv[2]) / 1000,
        float(sys.argv[3]) / 1000,
        float(sys.argv[4]),
        int(sys.argv[5]),
    )
    rng = random.Random(seed)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((0, 0))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)), NLM_F_REQUEST | NLM_F_ACK))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)), NLM_F_REQUEST | NLM_F_ACK))
    for _ in range(2):
        data = s.recv(65536)
        kind = struct.unpack_from("=H", data, 4)[0]
        code = struct.unpack_from("=i", data, 16)[0] if kind == NLMSG_ERROR else 0
        if code != 0:
            raise SystemExit(f"netem-queue: binding queue {queue} failed: {os.strerror(-code)}")
    counts = {"queue": queue, "packets": 0, "dropped": 0, "delayMsSum": 0.0}
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(json.dumps({"ready": queue}), flush=True)
    due: list[tuple[float, int, int]] = []
    while not stop:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 0.5
        try:
            readable, _, _ = select.select([s], [], [], timeout)
        except InterruptedError:
            continue
        if readable:
            data = s.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind & 0xFF == NFQNL_MSG_PACKET and kind >> 8 == NFNL_SUBSYS_QUEUE:
                    pos = offset + 20
                    while pos + 4 <= offset + length:
                        alen, atype = struct.unpack_from("=HH", data, pos)
                        if alen < 4:
                            break
                        if atype & 0x7FFF == NFQA_PACKET_HDR:
                            packet_id = struct.unpack_from("!I", data, pos + 4)[0]
                            counts["packets"] += 1
                            if rng.random() < loss:
                                counts["dropped"] += 1
                                verdict(s, queue, packet_id, NF_DROP)
                            else:
                                d = max(0.0, delay + rng.uniform(-jitter, jitter))
                                counts["delayMsSum"] += d * 1000
                                heapq.heappush(due, (time.monotonic() + d, packet_id, NF_ACCEPT))
                            break
                        pos += (alen + 3) & ~3
                offset += (length + 3) & ~3
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, packet_id, v = heapq.heappop(due)
            verdict(s, queue, packet_id, v)
    for _, packet_id, v in due:
        verdict(s, queue, packet_id, v)
    print(json.dumps(counts), flush=True)


def verdict(s: socket.socket, queue: int, packet_id: int, v: int) -> None:
    s.send(message(NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, struct.pack("!II", v, packet_id))))


if __name__ == "__main__":
    main()
