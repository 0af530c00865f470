"""A small open-loop HTTP/1.1 load generator over loopback, for overload tests.

httpx spends more CPU per request than the server under test, so on a 2-core machine it
cannot offer a multiple of the server's capacity. This sends pre-built requests on raw
keep-alive connections and reads just the status line, headers and a Content-Length body.
Every request ends as exactly one `Outcome`: an HTTP status, or the connection error that
kept it from getting one, so a test can count requests sent against answers received.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # when it was due (open loop: the schedule, so client-side waiting counts)
    latency: float  # seconds from sent_at to the end of the answer
    status: int  # 0 when no answer came
    lag: float = 0.0  # seconds from sent_at until the request was written (the client falling behind)
    retry_after: str | None = None
    error: str | None = None  # why no answer came: "refused" (never connected), "dropped: ..." (connected)


def build_request(path: str, body: bytes, host: str, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = time.perf_counter()
        self.requests = 0

    def idle_for(self) -> float:
        return time.perf_counter() - self.idle_since

    def closed_by_server(self) -> bool:
        """The server closed it while idle (its keep-alive timeout): EOF already received."""
        return self.reader.at_eof() or self.writer.is_closing()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request, read one response: (status, lower-cased headers, body)."""
        self.requests += 1
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


@dataclass
class ConnectionPool:
    """Idle keep-alive connections; a request that finds none opens one (up to `limit`)."""

    host: str
    port: int
    limit: int = 1000
    max_idle_s: float = 30.0  # as HTTP clients do: never reuse a connection the server may be closing
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0
    _freed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def acquire(self) -> Connection:
        """An idle connection the server has not closed (as HTTP clients check), else a new one."""
        async with self._freed:
            while True:
                while self.idle and (self.idle[-1].closed_by_server() or self.idle[-1].idle_for() > self.max_idle_s):
                    self.idle.pop().close()
                    self.opened -= 1
                if self.idle or self.opened < self.limit:
                    break
                await self._freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
        try:
            return await Connection.open(self.host, self.port)
        except BaseException:
            async with self._freed:
                self.opened -= 1
                self._freed.notify()
            raise

    async def release(self, conn: Connection, reusable: bool) -> None:
        async with self._freed:
            if reusable:
                conn.idle_since = time.perf_counter()
                self.idle.append(conn)
            else:
                conn.close()
                self.opened -= 1
            self._freed.notify()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def send_one(pool: ConnectionPool, request: bytes, sent_at: float) -> Outcome:
    try:
        conn = await pool.acquire()
    except OSError as exc:
        return Outcome(sent_at, time.perf_counter() - sent_at, 0, error=f"refused: {exc!r}")
    lag = time.perf_counter() - sent_at
    reused, idle = conn.requests > 0, conn.idle_for()
    try:
        status, headers, _ = await conn.exchange(request)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        await pool.release(conn, reusable=False)
        where = f"reused after {idle:.2f}s idle" if reused else "new connection"
        return Outcome(sent_at, time.perf_counter() - sent_at, 0, lag, error=f"dropped ({where}): {exc!r}")
    await pool.release(conn, reusable=headers.get("connection", "").lower() != "close")
    return Outcome(sent_at, time.perf_counter() - sent_at, status, lag, headers.get("retry-after"))


async def closed_loop(pool: ConnectionPool, request: bytes, clients: int, seconds: float) -> list[Outcome]:
    """`clients` senders, each sending its next request when the last is answered."""
    outcomes: list[Outcome] = []
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            outcomes.append(await send_one(pool, request, time.perf_counter()))

    await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


async def open_loop(
    pool: ConnectionPool,
    request: bytes,
    rate: float,
    seconds: float,
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> list[Outcome]:
    """Send at `rate` per second for `seconds`, whatever the answers do (an open loop)."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[Outcome]] = []
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send_one(pool, request, due)))
        if on_tick is not None and i % max(int(rate), 1) == 0:
            await on_tick()
    return list(await asyncio.gather(*tasks))


def serving_processes(server_pid: int, port: int) -> set[int]:
    """The processes that accept on `port`: the server itself with one worker, its worker
    processes with more (each with a listening socket of its own; the supervisor's holds the
    port and never listens)."""
    server = psutil.Process(server_pid)
    listening = {
        proc.pid
        for proc in server.children()
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp"))
    }
    return listening or {server_pid}


def owners(server_pid: int, port: int, conns: list[Connection]) -> list[int | None]:
    """The process holding the server end of each connection (None: not accepted yet)."""
    by_client_port = {}
    server = psutil.Process(server_pid)
    for proc in [server, *server.children()]:
        for sock in proc.net_connections("tcp"):
            if sock.laddr and sock.laddr.port == port and sock.raddr:
                by_client_port[sock.raddr.port] = proc.pid
    return [by_client_port.get(conn.writer.get_extra_info("sockname")[1]) for conn in conns]


async def answered_by(
    server_pid: int, host: str, port: int, request: bytes, rounds: int = 16
) -> dict[int | None, Counter[int]]:
    """The statuses each serving process gave on new connections: up to `rounds` rounds of 16 at
    once, until every process gave a 200. The kernel spreads new connections over the workers
    by their addresses, so a round may leave a worker none (a chance of 2 in 65,536), hence the rounds."""
    processes = serving_processes(server_pid, port)
    answers: dict[int | None, Counter[int]] = {pid: Counter() for pid in processes}

    async def one() -> tuple[int | None, int]:
        conn = await Connection.open(host, port)
        try:
            status, _, _ = await conn.exchange(request)
            [owner] = owners(server_pid, port, [conn])  # the connection is open and answered: accepted
            return owner, status
        finally:
            conn.close()

    for _ in range(rounds):
        for owner, status in await asyncio.gather(*(one() for _ in range(16))):
            answers.setdefault(owner, Counter())[status] += 1
        if all(answers[pid][200] for pid in processes):
            break
    return answers
