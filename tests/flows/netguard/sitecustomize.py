"""Loaded at start-up by every Python process whose path holds this folder (the tests put it on
PYTHONPATH): it records each name lookup and connection to a host other than this machine in
the file named by $DATADIET_NETGUARD_LOG, and lets it proceed, so a test can assert that a
process (and the processes it starts) reached for no outside host, telemetry included."""

from __future__ import annotations

import os
import socket

_LOG = os.environ.get("DATADIET_NETGUARD_LOG")
_LOCAL_NAMES = {None, "", "localhost", "0.0.0.0", "::", "::1"}


def _outside(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host not in _LOCAL_NAMES and not str(host).startswith("127.")


def _record(what: str, host: object) -> None:
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(f"pid {os.getpid()}: {what} {host}\n")


if _LOG:
    _getaddrinfo = socket.getaddrinfo
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if _outside(host):
            _record("lookup", host)
        return _getaddrinfo(host, *args, **kwargs)

    def connect(self, address):  # noqa: ANN001, ANN202
        if self.family in (socket.AF_INET, socket.AF_INET6) and _outside(address[0]):
            _record("connect", address[0])
        return _connect(self, address)

    def connect_ex(self, address):  # noqa: ANN001, ANN202
        if self.family in (socket.AF_INET, socket.AF_INET6) and _outside(address[0]):
            _record("connect", address[0])
        return _connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
