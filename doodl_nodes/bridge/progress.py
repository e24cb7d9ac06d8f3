"""Progress bar, previews, interrupts and live-view events for long DOODL/EDICT runs.

``comfy.utils.ProgressBar`` updates reach the browser (and check for a cancel) only when ComfyUI's
server installed its hook; outside a server (tests, scripts) they are no-ops. We also check for an
interrupt directly at every chain step, so a cancel stops the work within one step.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch

import comfy.model_management
import comfy.utils

__all__ = ["Progress", "json_safe", "send_event", "to_pil"]

log = logging.getLogger("doodl")


def to_pil(image_bchw: torch.Tensor, max_size: int = 512):
    """First image of a (B, 3, H, W) [0, 1] tensor as a PIL image no larger than ``max_size``."""
    from PIL import Image

    img = image_bchw[0].detach().float().clamp(0, 1).mul(255).round().byte()
    pil = Image.fromarray(img.permute(1, 2, 0).cpu().numpy())
    if max(pil.size) > max_size:
        pil.thumbnail((max_size, max_size))
    return pil


def json_safe(obj):
    """Replace NaN/inf floats (which browsers' JSON.parse rejects) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def send_event(event: str, data: dict, node_id: Optional[str] = None) -> bool:
    """Send a websocket event to the browser if ComfyUI's server is running (else do nothing)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None or not getattr(server, "client_id", None):
        return False
    payload = json_safe(dict(data))
    if node_id is not None:
        payload["node"] = node_id
    server.send_sync(event, payload, server.client_id)
    return True


class Progress:
    """A step counter over ``total`` units with interrupt checks and optional previews."""

    def __init__(self, total: int, node_id: Optional[str] = None):
        self.total = max(1, int(total))
        self.node_id = node_id
        self.pbar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        self.value = 0

    def step(self, n: int = 1) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.value = min(self.total, self.value + n)
        self.pbar.update_absolute(self.value, self.total)

    def preview(self, image_bchw: torch.Tensor) -> None:
        """Show ``image_bchw`` as the node's preview (JPEG, at most 512 px)."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.pbar.update_absolute(self.value, self.total, ("JPEG", to_pil(image_bchw), 512))
