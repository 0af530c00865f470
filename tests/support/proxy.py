"""A TCP proxy on loopback that a test can cut and restore: the server's way to a registry (a moto
S3 server that keeps its buckets) goes away and comes back, exactly as a network outage would."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to `target`; while cut, new connections are reset at once and
    open ones are closed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self.received = 0  # bytes that came back from the target, in all (what a cache should save)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_cut(self, cut: bool) -> None:
        if cut:
            with self._lock:
                self.cut.set()
                for sock in list(self._open):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        else:
            self.cut.clear()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # idle keep-alive connections stay open, as on a real network
            with self._lock:  # a cut that began meanwhile sees these, or they see the cut
                if self.cut.is_set():
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()  # a reset: nobody is there
                    upstream.close()
                    continue
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, a is upstream), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool = False) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self.received += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()  # each direction's thread closes the socket it read from

    def close(self) -> None:
        self._stop.set()
        self.set_cut(True)
        self.listener.close()
        self._thread.join(timeout=5)


@contextmanager
def cuttable_proxy(target: tuple[str, int]) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
