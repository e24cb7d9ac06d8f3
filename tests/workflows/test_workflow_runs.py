"""Every example workflow runs on a headless CPU ComfyUI server with tiny random models.

The server (``workflow_server.py``) has tiny random model files under the workflows' real file
names in a temporary models folder (``--extra-model-paths-config``). Each committed API twin is
queued as it is, except for the documented ``workflow_tools.TEST_OVERRIDES`` (3 steps, 2
iterations, 1 crop, 64 px images). Checked per run: success, an image from every output node, and
the DOODL node's ui output (one finite loss per iteration, a completed summary); for the inversion
round trip, that the reconstruction equals a plain VAE round trip of the input pixel for pixel.
"""
from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest

from tests.comfyui_env import require_comfyui
from tests.workflows import workflow_tools as wt

pytestmark = pytest.mark.comfyui
NAMES = wt.workflow_names()
OUTPUT_NODES = ("SaveImage", "PreviewImage")


@pytest.fixture(scope="module")
def server():
    require_comfyui()
    from tests.workflows.workflow_server import workflow_server

    return workflow_server()


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _images(server, result, node_id) -> list[np.ndarray]:
    return [_png(server.view(im["filename"], im.get("subfolder", ""), im.get("type", "output")))
            for im in result.outputs.get(node_id, {}).get("images", [])]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_on_cpu(server, name):
    prompt, changed = wt.apply_test_overrides(wt.load_api(name))
    assert changed, "the CPU run must lower the real-GPU settings"
    t0 = time.monotonic()
    result = server.run_prompt(prompt, timeout=240)
    assert result.ok, result.describe() + "\n" + server.log_tail(3000)
    wall = time.monotonic() - t0
    for nid, node in prompt.items():
        if node["class_type"] in OUTPUT_NODES:
            imgs = _images(server, result, nid)
            assert imgs and imgs[0].ndim == 3 and imgs[0].shape[2] == 3, (nid, node["_meta"])
        if node["class_type"] == "DOODLOptimize":
            ui = result.outputs[nid]
            losses = ui["doodl_losses"]
            assert len(losses) == node["inputs"]["iterations"], losses
            assert all(math.isfinite(v) for v in losses), losses
            (summary,) = ui["doodl_summary"]
            assert summary["status"] == "completed", summary
            assert 0 <= summary["best_iteration"] <= len(losses)
            assert summary["scores"], summary
    print(f"{name}: {wall:.1f}s ({len(prompt)} nodes; overrides: {', '.join(changed)})")


def test_inversion_round_trip_is_exact(server):
    """Reconstruction == VAE round trip of the input: the EDICT pair regenerates the latent."""
    name = next(n for n in NAMES if "inversion" in n)
    prompt, _ = wt.apply_test_overrides(wt.load_api(name))
    (stitch_id,) = [k for k, v in prompt.items() if v["class_type"] == "ImageStitch"]
    (encode_id,) = [k for k, v in prompt.items() if v["class_type"] == "VAEEncode"]
    (save_id,) = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    vae = prompt[encode_id]["inputs"]["vae"]
    plain = dict(prompt)
    plain["900"] = {"class_type": "VAEDecode", "inputs": {"samples": [encode_id, 0], "vae": vae}}
    plain["901"] = {"class_type": "SaveImage", "inputs": {"images": ["900", 0], "filename_prefix": "plain_vae"}}
    result = server.run_prompt(plain, timeout=240)
    assert result.ok, result.describe()
    (stitched,) = _images(server, result, save_id)
    (reference,) = _images(server, result, "901")
    h, w, _ = reference.shape
    spacing = prompt[stitch_id]["inputs"]["spacing_width"]
    assert stitched.shape == (h, 2 * w + spacing, 3)
    reconstruction = stitched[:, w + spacing:]
    assert np.abs(reconstruction - reference).max() <= 1  # 8-bit rounding at most
    # and the left half is the input itself (not a reconstruction)
    assert np.abs(stitched[:, :w] - reference).mean() > 1.0


def test_comparison_branches_start_from_the_same_seed(server):
    """Plain EDICT, plain Euler, one-step guidance and DOODL: same seed, four different samplers."""
    name = next(n for n in NAMES if "vs" in n)
    prompt, _ = wt.apply_test_overrides(wt.load_api(name))
    seeds = {v["inputs"].get("seed", v["inputs"].get("noise_seed")) for v in prompt.values()
             if v["class_type"] in ("EDICTGenerate", "SamplerCustom", "DOODLOptimize")}
    assert seeds == {0}
    result = server.run_prompt(prompt, timeout=240)
    assert result.ok, result.describe()
    saves = {v["_meta"]["title"]: _images(server, result, k)[0] for k, v in prompt.items()
             if v["class_type"] == "SaveImage"}
    assert len(saves) == 4, list(saves)
    plain_euler = next(v for k, v in saves.items() if "Euler" in k)
    one_step = next(v for k, v in saves.items() if "one-step" in k)
    assert np.abs(one_step - plain_euler).mean() > 0, "guidance scale 30 must change the Euler sample"


def test_checkpoint_loaded_completely(server):
    """The tiny checkpoint is a complete SD1.5 layout: ComfyUI reported no missing weights."""
    if not any(n in server.log_text() for n in ("CheckpointLoaderSimple", "Prompt executed")):
        server.run_prompt(wt.apply_test_overrides(wt.load_api(NAMES[0]))[0], timeout=240)
    log = server.log_text()
    assert "Prompt executed" in log
    for marker in ("clip missing", "unet missing", "unet unexpected", "no CLIP/text encoder weights"):
        assert marker not in log, [ln for ln in log.splitlines() if marker in ln][:3]
