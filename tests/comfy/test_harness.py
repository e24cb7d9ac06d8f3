"""Proves the ComfyUI test harness: tiny models through the real loaders, samplers, VAEs, files, server.

Everything runs against the real ComfyUI checkout (COMFYUI_PATH) on the CPU, mostly inside
``torch.inference_mode()`` as ComfyUI's ``execution.py`` runs every node.
"""
from __future__ import annotations

import io

import pytest
import torch

from tests.comfyui_env import require_comfyui
from tests.comfy import tiny_models as tm

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module", autouse=True)
def _comfy_single_thread():
    """ComfyUI imported; torch on one thread while this module runs (2 OpenMP threads on a busy
    2-core box were measured 25x slower; see server_harness's docstring)."""
    require_comfyui()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / (a.norm() + 1e-12))


def _raw_forward(model, x, cond, t=500.0):
    """The bare network (no model_sampling scaling): UNet/MMDiT output for input x and cond."""
    kw = {"context": cond[0][0]}
    if type(model.model.model_config).__name__ == "SD3":
        kw["y"] = cond[0][1]["pooled_output"]
    return model.model.diffusion_model(x, torch.full((x.shape[0],), t), **kw)


# ----------------------------------------------------------------------------------------------
# Detection: what ComfyUI makes of the tiny state dicts

MAX_PARAMS = {"eps": 17e6, "v": 75e6, "flow": 2e6, "v_patched": 17e6, "sdxl": 62e6, "flux": 0.6e6,
              "flux_schnell": 0.6e6}  # keep the suite fast


@pytest.mark.parametrize("kind", tm.KINDS)
def test_tiny_model_is_detected_as_claimed(kind):
    import comfy.model_base
    import comfy.model_sampling as ms

    s = tm.spec(kind)
    with torch.inference_mode():
        model = tm.load_tiny_model(kind)
    base = model.model
    assert type(base.model_config).__name__ == s.model_config
    assert base.model_type == getattr(comfy.model_base.ModelType, s.model_type)
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, getattr(ms, s.prediction)), type(sampling).__mro__
    assert isinstance(sampling, getattr(ms, s.sampling)), type(sampling).__mro__
    if s.prediction == "EPS":  # V_PREDICTION subclasses EPS: make sure it is not one
        assert not isinstance(sampling, ms.V_PREDICTION)
    if kind == "flow":
        assert sampling.shift == pytest.approx(3.0)
        assert float(sampling.sigma_max) == pytest.approx(1.0)
    if s.patch is not None:  # the patch lives on the clone; the shared BaseModel stays EPS
        assert not isinstance(base.model_sampling, ms.V_PREDICTION)
        assert "model_sampling" in model.object_patches
    assert base.latent_format.latent_channels == s.latent_channels
    params = list(base.parameters())
    assert all(p.is_inference() for p in params), "loaded under inference_mode like UNETLoader"
    assert sum(p.numel() for p in params) < MAX_PARAMS[kind]


def test_loader_pops_the_dict_it_is_given_and_the_cache_survives():
    import comfy.sd

    sd = tm.tiny_unet_state_dict("eps")
    n = len(sd)
    ref = sd["out.2.weight"]
    with torch.inference_mode():
        assert comfy.sd.load_diffusion_model_state_dict(sd) is not None
    assert len(sd) == 0, "ComfyUI no longer pops the keys: update the tiny_models docstring"
    again = tm.tiny_unet_state_dict("eps")
    assert len(again) == n and again["out.2.weight"] is ref


def test_builders_follow_the_callers_autograd_mode():
    """Inside inference_mode: inference-tensor weights (the trap the pack must survive); outside:
    ordinary weights that autograd can use. The cache must not leak one mode into the other."""
    with torch.inference_mode():
        inf_model = tm.load_tiny_model("flow")
        inf_vae = tm.tiny_vae("flow")
    model = tm.load_tiny_model("flow")
    vae = tm.tiny_vae("flow")
    assert all(p.is_inference() for p in inf_model.model.parameters())
    assert all(p.is_inference() for p in inf_vae.first_stage_model.parameters())
    assert not any(p.is_inference() for p in model.model.parameters())
    assert not any(p.is_inference() for p in vae.first_stage_model.parameters())
    assert next(model.model.parameters()).data_ptr() != next(inf_model.model.parameters()).data_ptr()

    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    cond = tm.tiny_conditioning("flow", tokens=8)
    _raw_forward(model, x, cond).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        _raw_forward(inf_model, torch.randn(1, 16, 8, 8, requires_grad=True), cond).sum().backward()


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_raw_output_depends_on_input_and_conditioning(kind):
    s = tm.spec(kind)
    with torch.inference_mode():
        model = tm.load_tiny_model(kind)
        g = torch.Generator().manual_seed(0)
        x1 = torch.randn((1, s.latent_channels, 8, 8), generator=g)
        x2 = torch.randn((1, s.latent_channels, 8, 8), generator=g)
        c1, c2 = tm.tiny_conditioning(kind, seed=1), tm.tiny_conditioning(kind, seed=2)
        out = _raw_forward(model, x1, c1)
        assert out.shape == x1.shape and torch.isfinite(out).all()
        assert 0.1 < float(out.std()) < 10.0
        assert _rel(out, _raw_forward(model, x2, c1)) > 0.1
        assert _rel(out, _raw_forward(model, x1, c2)) > 0.05
        assert _rel(out, _raw_forward(model, x1, c1, t=50.0)) > 0.01  # and on the timestep


# ----------------------------------------------------------------------------------------------
# An ordinary KSampler + VAE decode under inference_mode

@pytest.mark.parametrize("kind", tm.KINDS)
def test_ksampler_and_vae_decode_under_inference_mode(kind):
    import nodes

    with torch.inference_mode():
        model = tm.load_tiny_model(kind)
        vae = tm.tiny_vae(kind)
        neg = tm.tiny_conditioning(kind, seed=0)
        pos1, pos2 = tm.tiny_conditioning(kind, seed=1), tm.tiny_conditioning(kind, seed=2)
        latent = tm.tiny_latent(kind)

        def run(pos, seed=0):
            return nodes.common_ksampler(model, seed, 2, 3.0, "euler", "normal", pos, neg, latent,
                                         disable_noise=False)[0]["samples"]

        a, b, c = run(pos1), run(pos2), run(pos1, seed=1)
        assert a.shape == latent["samples"].shape
        assert torch.isfinite(a).all() and a.std() > 0
        assert torch.equal(a, run(pos1)), "a seeded KSampler run is deterministic"
        assert _rel(a, b) > 1e-3, "the sample must depend on the positive conditioning"
        assert _rel(a, c) > 1e-3, "the sample must depend on the noise seed"
        img = vae.decode(a)
        assert img.shape == (1, 64, 64, 3)
        assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
        assert img.std() > 1e-3 and _rel(img, vae.decode(c)) > 1e-3


def test_flow_ksampler_accepts_a_4_channel_empty_latent():
    """EmptyLatentImage gives 4 channels; ComfyUI widens them to 16 for SD3 (fix_empty_latent_channels)."""
    import nodes

    with torch.inference_mode():
        model = tm.load_tiny_model("flow")
        cond = tm.tiny_conditioning("flow")
        out = nodes.common_ksampler(model, 0, 1, 1.0, "euler", "simple", cond, cond,
                                    {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("arch", tm.VAE_ARCHS)
def test_vae_archs_build_decode_and_encode(kind, arch):
    expected = {"kl_small": "AutoencoderKL", "taesd": "TAESD",
                "kl_full": "AutoencoderKL" if kind == "eps" else "AutoencodingEngine"}[arch]
    ch = tm.spec(kind).latent_channels
    with torch.inference_mode():
        vae = tm.tiny_vae(kind, arch)
        assert type(vae.first_stage_model).__name__ == expected
        assert vae.latent_channels == ch and vae.spacial_compression_decode() == 8
        img = vae.decode(torch.randn(1, ch, 8, 8))
        assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all() and img.std() > 1e-3
        lat = vae.encode(img)
    assert lat.shape == (1, ch, 8, 8) and torch.isfinite(lat).all()


# ----------------------------------------------------------------------------------------------
# Files through ComfyUI's loader nodes (in-process)

def test_model_files_load_through_loader_nodes(tmp_path):
    import nodes

    files = tm.write_tiny_model_files(tmp_path / "models", ("eps", "flow"), vae_arch="taesd", checkpoints=True)
    assert files.yaml_path.is_file()
    tm.register_model_folders(files.models_root)
    with torch.inference_mode():
        for kind in ("eps", "flow"):
            s = tm.spec(kind)
            (unet,) = nodes.UNETLoader().load_unet(files.unets[kind], "default")
            assert type(unet.model.model_config).__name__ == s.model_config
            assert torch.equal(unet.model.diffusion_model.state_dict()["x_embedder.proj.weight" if kind == "flow"
                                                                      else "out.2.weight"],
                               tm.tiny_unet_state_dict(kind)["x_embedder.proj.weight" if kind == "flow"
                                                             else "out.2.weight"])
            (vae,) = nodes.VAELoader().load_vae(files.vaes[kind])
            assert type(vae.first_stage_model).__name__ == "TAESD" and vae.latent_channels == s.latent_channels
            model, clip, ckpt_vae = nodes.CheckpointLoaderSimple().load_checkpoint(files.checkpoints[kind])[:3]
            assert type(model.model.model_config).__name__ == s.model_config
            assert clip is None, "tiny checkpoints carry no text encoder"
            assert ckpt_vae.latent_channels == s.latent_channels


# ----------------------------------------------------------------------------------------------
# The headless server (one per session)

@pytest.fixture(scope="module")
def server():
    from tests.comfy.server_harness import session_server

    return session_server()


@pytest.fixture(scope="module")
def v_files(server):
    return server.add_tiny_models(("v",))


def test_server_starts_with_the_pack_whitelisted(server):
    import os

    assert server.running and server.start_s is not None
    info = server.object_info()
    for node in ("KSampler", "UNETLoader", "VAELoader", "LotusConditioning", "DOODLTestRandomConditioning"):
        assert node in info, node
    assert server.object_info("KSampler")["KSampler"]["output"] == ["LATENT"]
    log = server.log_text()
    # the whitelist let ComfyUI try the pack through the temp custom_nodes symlink (loaded or not)
    attempted = [ln for ln in log.splitlines() if "seconds" in ln and
                 ln.rstrip().endswith(os.sep + server.pack_name)]
    assert attempted, server.log_tail()
    assert server.pack_loaded("doodl_test_harness_nodes")
    # the pack itself imports cleanly and registers its nodes
    assert server.pack_import_errors() == [], server.log_tail()
    assert server.pack_loaded(), server.log_tail()
    assert "DOODLOptimize" in info and "EDICTGenerate" in info
    assert server.object_info("NoSuchNodeClass") == {}


def test_server_serves_the_frontend_it_was_asked_for(server):
    import urllib.error

    if server.frontend == "real":
        assert "<title>ComfyUI</title>" in server.get_text("/")
    else:
        with pytest.raises(urllib.error.HTTPError) as info:
            server.get_text("/")
        assert info.value.code == 404


def test_server_runs_a_core_txt2img_prompt(server, v_files):
    from PIL import Image

    from tests.comfy.server_harness import txt2img_core_prompt

    r1 = server.run_prompt(txt2img_core_prompt(v_files.unets["v"], v_files.vaes["v"], seed=1), timeout=60)
    assert r1.ok, r1.describe()
    (png,) = server.images(r1)
    im = Image.open(io.BytesIO(png))
    assert im.size == (64, 64)
    r2 = server.run_prompt(txt2img_core_prompt(v_files.unets["v"], v_files.vaes["v"], seed=2, save=False), timeout=60)
    assert r2.ok, r2.describe()
    (png2,) = server.images(r2)
    assert png2 != png, "a different seed must give a different image"


def test_server_reports_validation_and_execution_errors(server, v_files):
    from tests.comfy.server_harness import PromptRejected, txt2img_core_prompt

    with pytest.raises(PromptRejected) as info:
        server.queue_prompt(txt2img_core_prompt("no_such_unet.safetensors", v_files.vaes["v"]))
    assert "node_errors" in info.value.response
    # runtime failure: the SD15 (768) model fed 1024-wide Lotus conditioning
    eps = server.add_tiny_models(("eps",))
    res = server.run_prompt(txt2img_core_prompt(eps.unets["eps"], eps.vaes["eps"]), timeout=60)
    assert res.status == "error" and res.error["node_type"] == "KSampler", res.describe()
    # ...and the same model runs with the harness node's 768-wide conditioning
    cond = {"class_type": "DOODLTestRandomConditioning",
            "inputs": {"width": 768, "tokens": 77, "pooled_width": 768, "seed": 3}}
    ok = server.run_prompt(txt2img_core_prompt(eps.unets["eps"], eps.vaes["eps"], conditioning=cond), timeout=60)
    assert ok.ok, ok.describe()


def test_server_interrupt_stops_a_long_prompt(server, v_files):
    import time

    from tests.comfy.server_harness import txt2img_core_prompt

    pid = server.queue_prompt(txt2img_core_prompt(v_files.unets["v"], v_files.vaes["v"], seed=7, steps=400))
    t0 = time.monotonic()
    while not server.queue()["queue_running"] and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    time.sleep(0.5)
    server.interrupt(pid)
    res = server.wait(pid, timeout=30)
    assert res.status == "interrupted", res.describe()
    assert time.monotonic() - t0 < 20, "400 steps would take ~50 s: the interrupt must cut it short"


def test_server_wait_timeout_cancels_the_prompt(server, v_files):
    import time

    from tests.comfy.server_harness import txt2img_core_prompt

    pid = server.queue_prompt(txt2img_core_prompt(v_files.unets["v"], v_files.vaes["v"], seed=8, steps=400))
    t0 = time.monotonic()
    while not server.queue()["queue_running"] and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    with pytest.raises(TimeoutError, match="cancelled"):
        server.wait(pid, timeout=0.5)
    res = server.wait(pid, timeout=30)
    assert res.status == "interrupted", res.describe()
    assert not server.queue()["queue_running"] and not server.queue()["queue_pending"]
