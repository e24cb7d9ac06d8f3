"""Progress bars: tqdm when it is installed (ComfyUI ships it), else a small text fallback."""
from __future__ import annotations

import sys
import time

__all__ = ["progress"]


class _TextBar:
    """Prints ``desc: n/total [elapsed] postfix`` about every 2 seconds and once at the end."""

    def __init__(self, total: int, desc: str, file, disable: bool):
        self.total, self.desc, self.file, self.disable = total, desc, file, disable
        self.n, self.postfix = 0, ""
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if not self.disable and (now - self.last > 2.0 or self.n >= self.total):
            self.last = now
            print(f"{self.desc}: {self.n}/{self.total} [{now - self.t0:.0f}s] {self.postfix}",
                  file=self.file, flush=True)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, desc: str, *, disable: bool = False):
    """A context-manager progress bar with ``update(k)``, ``set_postfix_str(s)``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a ComfyUI requirement, but do not depend on it
        return _TextBar(total, desc, sys.stderr, disable)
    return tqdm(total=total, desc=desc, disable=disable, leave=True, dynamic_ncols=True,
                file=sys.stderr)
