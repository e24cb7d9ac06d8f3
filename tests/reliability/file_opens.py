"""Count how often files are opened, by any process, with Linux inotify (through ctypes).

A black-box signal for "was this model file loaded again?" in a server subprocess: nothing is
patched in the server, and listing or stat-ing a folder (ComfyUI rescans model folders on every
request) does not count, only ``open()`` (``torch.load``, ``safetensors``' open before its mmap).

Gotcha: the kernel merges *identical consecutive unread* events, so three ``open()``s with no
read in between would read back as one ``IN_OPEN``. Watching ``IN_CLOSE_NOWRITE`` too puts a
different event between two opens, so each open is counted (checked in ``self_test``).
"""
from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

IN_CLOSE_WRITE = 0x08
IN_CLOSE_NOWRITE = 0x10
IN_OPEN = 0x20
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class InotifyUnavailable(OSError):
    """Not Linux, or inotify could not be set up (the reason is the message)."""


class OpenCounter:
    """``with OpenCounter([a, b]) as c: ...; c.counts()`` -> {path: number of opens since start}."""

    def __init__(self, paths):
        if not sys.platform.startswith("linux"):
            raise InotifyUnavailable(f"inotify needs Linux (this is {sys.platform})")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise InotifyUnavailable(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        self._wd: dict[int, str] = {}
        self._opens: dict[str, int] = {}
        try:
            for p in paths:
                p = str(Path(p).resolve())
                wd = self._libc.inotify_add_watch(self.fd, p.encode(),
                                                  IN_OPEN | IN_CLOSE_NOWRITE | IN_CLOSE_WRITE)
                if wd < 0:
                    raise InotifyUnavailable(f"inotify_add_watch({p}) failed: "
                                             f"{os.strerror(ctypes.get_errno())}")
                self._wd[wd] = p
                self._opens[p] = 0
        except BaseException:
            self.close()
            raise

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            off = 0
            while off < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                off += _EVENT.size + length
                if mask & IN_OPEN and wd in self._wd:
                    self._opens[self._wd[wd]] += 1

    def counts(self) -> dict[str, int]:
        self._drain()
        return dict(self._opens)

    def count(self, path) -> int:
        return self.counts()[str(Path(path).resolve())]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def self_test(tmp_dir) -> None:
    """Three opens of one file read back as three (raises AssertionError otherwise)."""
    f = Path(tmp_dir) / "inotify_probe.bin"
    f.write_bytes(b"x")
    with OpenCounter([f]) as c:
        for _ in range(3):
            with open(f, "rb") as h:
                h.read()
        os.stat(f)
        n = c.count(f)
    assert n == 3, f"inotify counted {n} opens of {f}, expected 3"
