"""Image -> loss modules (CLIP text, CLIP image ensemble, aesthetic heads, WS-DAN, symmetry, weighted sums). No ComfyUI import."""
