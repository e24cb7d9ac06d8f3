"""Pure-torch math: EDICT in sigma space, chain gradients, the DOODL optimizer, crops and losses. No ComfyUI."""
