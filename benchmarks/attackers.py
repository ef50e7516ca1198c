"""Attackers for ``benchmarks.attack_bench``, each run as its own process so its CPU is not the generator's.

- ``slow``: ``--connections`` sockets kept open, half trickling a request head and half an authenticated
  delivery's body (its head complete, from ``--requests``), one byte per second each; a connection the server
  closes (a read deadline) is opened again at once, so the pressure stays constant.
- ``flood``: ``--connections`` senders of unauthenticated 1 MiB deliveries, each sending the whole request,
  reading the answer, and starting again as fast as it can.

On SIGTERM each prints one JSON line of counts on stdout and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

MIB = 1024 * 1024
SLOW_HEAD = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["slow", "flood"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--requests", type=Path, help="slow: signed requests, one per line, hex-encoded")
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.mode == "slow":
        signed = [bytes.fromhex(line) for line in args.requests.read_text().split()] if args.requests else []
        asyncio.run(_slow(args.port, args.connections, signed, counts, stop))
    else:
        _flood(args.port, args.connections, counts, stop)
    print(json.dumps(counts), flush=True)


async def _slow(port: int, connections: int, signed: list[bytes], counts: Counter[str], stop: threading.Event) -> None:
    async def trickle(index: int) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            counts["connections"] += 1
            if index % 2 == 0 or not signed:
                first, rest = SLOW_HEAD, b"X-Slow: " + b"a" * 100_000
            else:
                request = signed[index % len(signed)]
                head_end = request.index(b"\r\n\r\n") + 4
                first, rest = request[:head_end], request[head_end:]
            try:
                writer.write(first)
                for byte in rest:
                    await asyncio.sleep(1.0)
                    if stop.is_set() or reader.at_eof():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
            except OSError:
                pass
            counts["closed_by_server"] += 1
            writer.close()

    tasks = [asyncio.create_task(trickle(index)) for index in range(connections)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _flood(port: int, connections: int, counts: Counter[str], stop: threading.Event) -> None:
    body = b'{"padding":"' + b"x" * (MIB - 14) + b'"}'
    head = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nCe-Specversion: 1.0\r\n"
        b"Ce-Id: flood\r\nCe-Source: cgr.dev\r\nCe-Type: dev.chainguard.registry.pull.v1\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    lock = threading.Lock()

    def sender() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    with contextlib.suppress(OSError):  # refused before the body was read: the answer may be there
                        sock.sendall(head + body)
                    answer = sock.recv(65536)
                status = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
            except OSError:
                status = "reset"
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    while not stop.wait(0.2):
        pass
    deadline = time.monotonic() + 12
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    main()
