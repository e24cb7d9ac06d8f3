"""Listen to a ComfyUI server's websocket (``/ws?clientId=...``) in a background thread.

Prompts queued with the listener's ``client_id`` get their ``executing`` / ``progress`` /
``execution_*`` events sent here; each is kept with its arrival time (``time.monotonic()``), so a
test can wait for "node 8 reported progress" and time what follows. Text frames only (binary
frames are previews). Uses aiohttp's client (a ComfyUI requirement), so no extra package.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass


@dataclass
class Event:
    t: float  # time.monotonic() on arrival
    type: str
    data: dict


class WsListener:
    def __init__(self, base_url: str, client_id: str | None = None, connect_timeout: float = 10.0):
        self.client_id = client_id or uuid.uuid4().hex
        self.url = base_url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._connected = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="comfy-ws", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise TimeoutError(f"websocket {self.url} did not connect in {connect_timeout:.0f}s: "
                               f"{self._error}")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported by wait_for / the constructor
            self._error = exc
            self._connected.set()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        import aiohttp

        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url, heartbeat=None) as ws:
                self._connected.set()
                stop_task = asyncio.ensure_future(self._stop.wait())
                while not self._stop.is_set():
                    recv = asyncio.ensure_future(ws.receive())
                    done, _ = await asyncio.wait({recv, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                    if recv not in done:
                        recv.cancel()
                        break
                    msg = recv.result()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        try:
                            obj = json.loads(msg.data)
                        except ValueError:
                            continue
                        ev = Event(time.monotonic(), obj.get("type", ""), obj.get("data") or {})
                        with self._cond:
                            self.events.append(ev)
                            self._cond.notify_all()
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                                      aiohttp.WSMsgType.ERROR):
                        break
                stop_task.cancel()

    def wait_for(self, predicate, timeout: float) -> Event:
        """The first event (already received or to come) for which ``predicate(event)`` is true."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for ev in self.events[seen:]:
                    if predicate(ev):
                        return ev
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching websocket event in {timeout:.0f}s "
                                       f"(last: {[(e.type, e.data) for e in self.events[-5:]]})")
                if self._error is not None or not self._thread.is_alive():
                    raise ConnectionError(f"websocket listener stopped: {self._error}")
                self._cond.wait(min(left, 0.5))

    def of(self, prompt_id: str, type_: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.data.get("prompt_id") == prompt_id
                    and (type_ is None or e.type == type_)]

    def close(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
