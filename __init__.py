"""ComfyUI entry point of the DOODL pack: registration only.

The node classes are imported only when ComfyUI (`comfy`) is importable, so the package, its pure-torch
core and its tests import anywhere.
"""
try:
    import comfy  # noqa: F401
except ImportError:  # not running inside ComfyUI
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .doodl_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
