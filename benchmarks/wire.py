"""Bytes on the wire for one depth request, counted on the socket (not computed by hand)."""
from __future__ import annotations

import socket

import numpy as np

from device.protocol import RunnerClient


class CountingSocket:
    """A stream socket that counts what goes out (sendall) and comes in (recv_into)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent = 0
        self.received = 0

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        self.sent += len(data)

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        n = self._sock.recv_into(buffer, nbytes)
        self.received += n
        return n

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def close(self) -> None:
        self._sock.close()

    def reset(self) -> None:
        self.sent = self.received = 0


def measure_wire(counting: CountingSocket, client: RunnerClient, rgb: np.ndarray, want: str = "f16") -> dict[str, float]:
    """Request + reply bytes of one INFER through `client`, whose socket is `counting`."""
    counting.reset()
    client.infer(rgb, want)
    return {"wire_bytes_per_request": float(counting.sent + counting.received),
            "wire_request_bytes": float(counting.sent), "wire_reply_bytes": float(counting.received)}
