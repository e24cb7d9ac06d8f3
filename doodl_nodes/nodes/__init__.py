"""Node classes: schemas and calls into the layers below, nothing else. Imported only inside ComfyUI."""
from __future__ import annotations

from . import doodl_nodes, edict_nodes, preference_nodes, scorer_nodes

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _m in (edict_nodes, doodl_nodes, scorer_nodes, preference_nodes):
    NODE_CLASS_MAPPINGS.update(_m.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_m.NODE_DISPLAY_NAME_MAPPINGS)
