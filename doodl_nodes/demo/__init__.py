"""The embedded demo: a miniature, offline replication of DOODL's claim that optimizing the starting
noise through the whole sampling chain guides better than one-step classifier guidance.

Run ``python -m doodl_nodes.demo --quick`` (a 2-core CPU, a few minutes, training included) or
``python -m doodl_nodes.demo`` (the full setting, meant for a GPU). See README.md beside this file.
It uses ``doodl_nodes.core`` exactly as the ComfyUI nodes do: ``edict_sample``, ``doodl_optimize``,
``one_step_guided_denoiser``, ``make_crops``.
"""
