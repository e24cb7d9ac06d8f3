"""A network tripwire for a whole Python process, installed into a test venv by a ``.pth`` file.

When ``DOODL_NETGUARD_LOG`` is set, every name lookup (``socket.getaddrinfo``) and every
``connect`` to anything but loopback or a Unix socket is refused (``OSError``) and recorded as one
JSON line in that file, with the Python frames that asked for it. A download at start therefore
cannot happen *and* cannot go unnoticed: the test asserts the file stays empty. Serving on
127.0.0.1 (bind/listen/accept) is untouched. Standard library only; does nothing without the
environment variable.
"""
from __future__ import annotations

import json
import os
import socket
import traceback

LOG = os.environ.get("DOODL_NETGUARD_LOG")
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _is_local_host(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return host in LOCAL_NAMES or (isinstance(host, str) and (host.startswith("127.") or host == "::1"))


def _record(kind: str, target) -> None:
    frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-2]][-12:]
    with open(LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "kind": kind, "target": repr(target)[:200],
                             "stack": frames}) + "\n")


def install() -> None:
    if not LOG or getattr(socket, "_doodl_netguard", False):
        return
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local_host(host):
            _record("getaddrinfo", host)
            raise socket.gaierror(f"netguard: name lookup of {host!r} refused (no network at start)")
        return real_getaddrinfo(host, *args, **kwargs)

    def _check(sock, address):
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_local_host(host):
            _record("connect", address)
            raise OSError(f"netguard: connection to {address!r} refused (no network at start)")

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket._doodl_netguard = True


install()
