"""A TCP forwarder between curate and a local S3 server that can cut and stall connections, as
object storage and networks really do (an outage, a writer whose packets stop for a minute)."""

from __future__ import annotations

import select
import socket
import struct
import threading


class FaultProxy:
    """Forwards 127.0.0.1:port to `target`. `mode`: "up" forwards; "down" resets every
    connection (new ones at once: a refused/reset connect, as a dead endpoint gives); "stall"
    holds every byte in both directions until the mode changes (nothing is lost, only late).
    `stall_on`: the first request containing these bytes turns the mode to "stall" and is held
    (a writer cut off exactly at its commit point)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.mode = "up"
        self.stall_on: bytes | None = None  # bytes of a request that switch the mode to "stall", that request held
        self.stalled = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        assert mode in ("up", "down", "stall")
        self.mode = mode
        if mode == "down":
            with self._lock:
                for c in self._conns:
                    _reset(c)
                self._conns.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.set("down")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                continue  # (ECONNABORTED: a client that reset before accept)
            if self.mode == "down":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        held: list[tuple[socket.socket, bytes]] = []
        try:
            while not self._closed:
                if self.mode == "stall":
                    select.select([], [], [], 0.05)
                    continue
                for s, data in held:  # what a stall held goes through, in order
                    peer[s].sendall(data)
                held.clear()
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:  # a normal end: close gently, so what was forwarded still arrives
                        for x in (a, b):
                            try:
                                x.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                        for x in (a, b):
                            x.close()
                        return
                    if s is a and self.stall_on and self.stall_on in data:
                        self.stall_on = None
                        self.mode = "stall"
                        self.stalled.set()
                    if self.mode == "stall":
                        held.append((s, data))
                        continue
                    peer[s].sendall(data)
        except (OSError, ValueError):  # closed under us by set("down")
            for s in (a, b):
                _reset(s)


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        s.close()
    except OSError:
        pass
