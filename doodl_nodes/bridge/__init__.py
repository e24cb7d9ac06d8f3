"""The only layer that imports ComfyUI (`comfy`, `folder_paths`, ...)."""
