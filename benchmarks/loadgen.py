"""A lean HTTP/1.1 load generator: asyncio protocols over keep-alive connections on loopback.

Requests are pre-built bytes (``benchmarks.workload``), so the generator only writes them and reads
each answer's status line and ``Content-Length``. Two modes:

- closed loop (``closed_loop``): N connections, each sending its next request as soon as the previous
  answer arrives: the maximum throughput the server sustains at that concurrency.
- open loop (``open_loop``): requests sent at fixed times (``rate`` per second) whatever the server
  does; latency is measured from each request's *scheduled* time, so a stalled server or a late
  generator shows up in the figures instead of being hidden (no coordinated omission).

A request whose connection breaks is recorded as failed, never retried: the benchmark checks what
landed against what was acknowledged, so it must know exactly which requests got a 2xx.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.workload import Delivery

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
NO_ANSWER = 0
"""The status recorded for a request whose connection broke before an answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
        total = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        if _CONNECTION_CLOSE.search(self.buffer, 0, end + 2):
            self._close()
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(NO_ANSWER)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def send(self, request: bytes) -> int:
        """Send one request and return the answer's status (``NO_ANSWER`` if the connection broke)."""
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def _connect(port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(_Connection, "127.0.0.1", port)
    return connection


@dataclass
class Trial:
    """What one timed run sent and got back: per request, its index, status and latency (seconds)."""

    mode: str
    seconds: float = 0.0
    indices: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)  # open loop: how late each send left
    generator_cpu_seconds: float = 0.0

    def record(self, index: int, status: int, latency: float) -> None:
        self.indices.append(index)
        self.statuses.append(status)
        self.latencies.append(latency)

    @property
    def acked(self) -> int:
        return sum(1 for status in self.statuses if 200 <= status < 300)

    @property
    def not_acked(self) -> int:
        return len(self.statuses) - self.acked

    @property
    def acked_per_second(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    def latency(self, quantile: float) -> float:
        """Nearest-rank quantile of the latencies of acknowledged requests, in seconds."""
        return percentile(
            [lat for lat, st in zip(self.latencies, self.statuses, strict=True) if 200 <= st < 300], quantile
        )

    @property
    def generator_cores(self) -> float:
        """The generator's CPU time over the trial's wall time (1.0 = one core busy all along)."""
        return self.generator_cpu_seconds / self.seconds if self.seconds > 0 else 0.0


def percentile(values: Sequence[float], quantile: float) -> float:
    """Nearest-rank quantile (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def closed_loop(port: int, deliveries: Sequence[Delivery], concurrency: int, duration: float) -> Trial:
    """Send ``deliveries`` in order from ``concurrency`` connections, each as fast as answers come,
    until ``duration`` seconds have passed (or the deliveries run out); wait for every answer."""
    return asyncio.run(_closed_loop(port, deliveries, concurrency, duration))


async def _closed_loop(port: int, deliveries: Sequence[Delivery], concurrency: int, duration: float) -> Trial:
    connections = await asyncio.gather(*(_connect(port) for _ in range(concurrency)))
    trial = Trial("closed")
    next_index = 0
    cpu_start, started = time.process_time(), time.perf_counter()
    deadline = started + duration

    async def run(connection: _Connection) -> None:
        nonlocal next_index
        while next_index < len(deliveries) and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            if connection.closed:
                connection = await _connect(port)
            sent = time.perf_counter()
            status = await connection.send(deliveries[index].request)
            trial.record(index, status, time.perf_counter() - sent)
        connection._close()

    await asyncio.gather(*(run(connection) for connection in connections))
    trial.seconds = time.perf_counter() - started
    trial.generator_cpu_seconds = time.process_time() - cpu_start
    return trial


def open_loop(port: int, deliveries: Sequence[Delivery], rate: float, connections: int) -> Trial:
    """Send each of ``deliveries`` at its scheduled time (``rate`` per second) over a pool of
    ``connections`` keep-alive connections; latency counts from the scheduled time."""
    return asyncio.run(_open_loop(port, deliveries, rate, connections))


async def _open_loop(port: int, deliveries: Sequence[Delivery], rate: float, connections: int) -> Trial:
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for connection in await asyncio.gather(*(_connect(port) for _ in range(connections))):
        idle.put_nowait(connection)
    trial = Trial("open")
    cpu_start, started = time.process_time(), time.perf_counter()
    first = started + 0.01

    async def send(index: int, scheduled: float) -> None:
        connection = await idle.get()  # waiting for a free connection counts as latency
        if connection.closed:
            connection = await _connect(port)
        status = await connection.send(deliveries[index].request)
        trial.record(index, status, time.perf_counter() - scheduled)
        idle.put_nowait(connection)

    tasks = []
    for index in range(len(deliveries)):
        scheduled = first + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        trial.send_lags.append(max(0.0, time.perf_counter() - scheduled))
        tasks.append(asyncio.create_task(send(index, scheduled)))
    await asyncio.gather(*tasks)
    trial.seconds = time.perf_counter() - started
    trial.generator_cpu_seconds = time.process_time() - cpu_start
    while not idle.empty():
        idle.get_nowait()._close()
    return trial
