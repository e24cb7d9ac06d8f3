"""The architecture matrix: every model family the pack claims, as a tiny random model loaded by
ComfyUI's own loaders (``tests/comfy/tiny_models.py``), through every part of the pack.

=============  ==================================  ================================================
kind           architecture                        what is special
=============  ==================================  ================================================
``eps``        SD1.5 (EPS)                         cross-attention only
``v``          SD2 (v-prediction)                  detected by ComfyUI's SD20 statistics rule
``sdxl``       SDXL (KOALA_700M layout)            ADM ``y``: pooled CLIP-G + size embeddings
``flow``       SD3 MMDiT                           flow (CONST), pooled ``y``
``flux``       Flux dev                            guidance embedding; in-place blocks replaced
``flux_schnell`` Flux schnell                      no guidance embedding, shift 1
=============  ==================================  ================================================

Per architecture: detection, EDICT round trip (float64 state and node level), DOODL with both
chains, gradients of both chains finite and nonzero, the one-step baseline (both variants), the
extra conditioning on the path the CUDA graphs record, and refusals. The ``v`` and ``sdxl`` models
are the expensive ones on CPU (0.12 s and 0.18 s per CFG call on one thread, against < 0.05 s).
"""
import functools
import json
import math

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui
ARCHS = ["eps", "v", "sdxl", "flow", "flux", "flux_schnell"]
SLOW = {"v", "sdxl"}
FLOW_LIKE = {"flow", "flux", "flux_schnell"}


def _params(kinds=ARCHS):
    return [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in kinds]


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    return True


@functools.lru_cache(maxsize=None)
def _setup(kind, steps=3):
    from tests.comfy.setups import tiny_setup

    return tiny_setup(kind, steps)


def _channels(kind):
    return 16 if kind in FLOW_LIKE else 4


def _latent(kind):
    from tests.comfy.tiny_models import tiny_latent

    return tiny_latent(kind)


def _scorer():
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    return SymmetryScorer()


def _doodl(kind, *, chain="edict", iterations=2, sigmas=None, model=None, **overrides):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize

    m, vae, pos, neg, s = _setup(kind)
    args = dict(model=m if model is None else model, vae=vae, positive=pos, negative=neg, cfg=2.0,
                sigmas=s if sigmas is None else sigmas, scorer=_scorer(), seed=0, iterations=iterations,
                lr=5.0, momentum=0.9, clip=1e-2, perturbation=0.0, renormalize=True, tie_latents=True,
                start_step=0, grad_mode="checkpoint", num_crops=0, cut_power=0.3, crop_reduction="auto",
                score_images="both", precision="fp32", latent=_latent(kind), chain=chain)
    args.update(overrides)
    with torch.inference_mode():
        return DOODLOptimize().optimize(**args)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("kind", ARCHS)
def test_comfyui_detects_the_architecture(comfy, kind):
    import comfy.model_sampling as ms_mod

    from tests.comfy.tiny_models import spec

    s = spec(kind)
    model = _setup(kind)[0]
    base = model.model
    assert type(base.model_config).__name__ == s.model_config
    assert base.model_type.name == s.model_type
    ms = model.get_model_object("model_sampling")
    assert isinstance(ms, getattr(ms_mod, s.prediction)) and isinstance(ms, getattr(ms_mod, s.sampling))
    assert base.latent_format.latent_channels == s.latent_channels
    if kind == "sdxl":
        assert type(base).__name__ == "SDXL" and base.adm_channels == 2816
    if kind.startswith("flux"):
        assert type(base).__name__ == "Flux"
        assert base.diffusion_model.params.guidance_embed == (kind == "flux")


def test_width_patch_changes_nothing_for_real_sizes(comfy):
    """tests/comfy/tiny_widths.py only fills in widths that differ from ComfyUI's fixed ones: on
    templates with the real sizes (meta tensors, no memory) every override is empty."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.sdxl_clip import SDXLClipG
    from comfy.text_encoders.sd3_clip import T5XXLModel

    from tests.comfy.tiny_widths import clip_g_overrides, flux_overrides, t5_overrides

    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        flux = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                    hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1,
                    axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                    operations=ops).state_dict()
        t5 = T5XXLModel(device="meta").transformer.state_dict()
        clip_g = SDXLClipG(device="meta").transformer.state_dict()
    assert flux_overrides(flux) == {} and t5_overrides(t5) == {}
    assert clip_g_overrides({"conditioner.embedders.1.model.transformer." + k: v for k, v in clip_g.items()}) == {}
    # and the tiny ones are read back from their tensors
    from tests.comfy.tiny_models import tiny_unet_state_dict

    assert flux_overrides(tiny_unet_state_dict("flux")) == {"hidden_size": 64, "num_heads": 2,
                                                           "axes_dim": [4, 14, 14]}


# ------------------------------------------------------------------------------------------- EDICT

@pytest.mark.parametrize("kind", _params())
def test_edict_round_trip_is_exact(comfy, kind, record_property):
    """The float64 EDICT state comes back to rounding (< 1e-10 relative), and through the nodes
    (float32 LATENT in and out) to float32 rounding."""
    import nodes

    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.core.edict import edict_invert, edict_sample
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate, EDICTInversion

    model, vae, pos, neg, sigmas = _setup(kind)
    shape = (1, _channels(kind), 8, 8)

    def fn(chain):
        x0 = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        xt, yt = edict_invert(chain.denoise, x0, x0.clone(), chain.sigmas, input_scale=chain.input_scale)
        back, _ = edict_sample(chain.denoise, xt, yt, chain.sigmas, input_scale=chain.input_scale)
        return _rel(back, x0), float(xt.std())

    with torch.inference_mode():
        state_err, xt_std = run_in_guider(model, pos, neg, 2.0, sigmas, shape, fn)
        image = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(0))
        latent = nodes.VAEEncode().encode(vae, image)[0]
        el, _ = EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                        latent=latent, p=0.93, leapfrog=True)
        rec = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas, seed=0,
                                       p=0.93, leapfrog=True, edict_latent=el)[0]
    node_err = _rel(rec["samples"], latent["samples"])
    record_property("edict_state_round_trip_rel", state_err)
    record_property("edict_node_round_trip_rel", node_err)
    print(f"\n{kind}: EDICT round trip, float64 state {state_err:.2e}, encoded image LATENT {node_err:.2e}")
    assert math.isfinite(xt_std) and xt_std > 0
    assert state_err < 1e-10, state_err
    # A VAE-encoded latent holds float32 values; on flow models (the model sees the state itself)
    # EDICT's last states then sit exactly on float32 rounding ties of the model input. Without the
    # 48-bit pre-rounding of ChainModel.denoise (bridge/chain.py model_input_float32) the tiny Flux
    # gave 1.5e-6 here (30 of 1024 inputs of the last call cast the other way in the inverse pass).
    assert node_err < 1e-6, node_err


def test_model_input_cast_is_robust_at_float32_ties(comfy):
    """The float64 -> float32 model input: a value exactly on a float32 rounding tie and the same
    value one float64 step off cast alike (a plain cast splits them); generic values cast exactly
    as a plain cast does; the gradient passes unchanged."""
    from doodl_nodes.bridge.chain import model_input_float32

    lo = torch.tensor([1.0, -3.0, 0.7], dtype=torch.float32).double()
    ulp32 = torch.tensor([2.0 ** -23, 2.0 * 2.0 ** -23, 2.0 ** -24], dtype=torch.float64)  # of 1, 3, 0.7
    tie = lo + torch.sign(lo) * ulp32 / 2          # exactly halfway between two float32 values
    for off in (torch.nextafter(tie, tie + 1), torch.nextafter(tie, tie - 1)):
        assert torch.equal(model_input_float32(off), model_input_float32(tie))
    assert not torch.equal(torch.nextafter(tie, tie + 1).float(), torch.nextafter(tie, tie - 1).float())
    z = torch.randn(100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7
    assert torch.equal(model_input_float32(z), z.float())
    zg = z[:10].clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad((model_input_float32(zg).double() * torch.arange(10.0)).sum(), zg)
    assert torch.equal(g, torch.arange(10.0, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- DOODL

@pytest.mark.parametrize("chain", ["edict", "euler"])
@pytest.mark.parametrize("kind", _params())
def test_doodl_runs_with_both_chains(comfy, kind, chain):
    out = _doodl(kind, chain=chain)
    h = json.loads(out["result"][4])
    assert len(h["losses"]) == 2 and all(math.isfinite(v) for v in h["losses"]), h
    assert h["status"] == "completed" and math.isfinite(h["final_loss"])
    best, pair, noise = out["result"][1]["samples"], out["result"][5], out["result"][6]
    assert best.shape == (1, _channels(kind), 8, 8) and torch.isfinite(best).all()
    assert pair.chain == chain and (chain == "edict" or torch.equal(pair.x, pair.y))
    assert noise.generate_noise(_latent(kind)).shape == best.shape
    assert h["losses"][1] != h["losses"][0]   # the update moved the noise


@pytest.mark.parametrize("kind", _params())
def test_gradients_of_both_chains_are_finite_and_nonzero(comfy, kind):
    """Through the guider with grad (as DOODL runs): EDICT (both latents) and Euler gradients of a
    decoded-pixel loss, finite and nonzero; on Flux, through the pack's block replacements."""
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.backprop import edict_value_and_grad, euler_value_and_grad
    from doodl_nodes.core.crops import CropConfig

    model, vae, pos, neg, sigmas = _setup(kind)
    shape = (1, _channels(kind), 8, 8)
    scorer = _scorer()

    def fn(chain):
        x = chain.initial_latent(torch.randn(shape, generator=torch.Generator().manual_seed(0)))

        def objective(a, b=None):
            lat = a if b is None or b is a else torch.cat([a, b])
            return scorer.loss(decode_differentiable(vae, chain.latent_format, lat), CropConfig(0)).sum()

        _, gx, gy = edict_value_and_grad(chain.denoise, objective, x, x.clone(), chain.sigmas,
                                         input_scale=chain.input_scale)
        _, ge = euler_value_and_grad(chain.denoise, lambda a: objective(a), x, chain.sigmas)
        replaced = (chain.model_wrap.model_options.get("transformer_options", {})
                    .get("patches_replace", {}).get("dit", {}))
        return gx, gy, ge, sorted(replaced)

    with torch.inference_mode():
        gx, gy, ge, replaced = run_in_guider(model, pos, neg, 2.0, sigmas, shape, fn, grad=True, precision="fp32")
    for g in (gx, gy, ge):
        assert torch.isfinite(g).all() and float(g.abs().max()) > 0
    assert not torch.equal(gx, gy)
    if kind.startswith("flux"):
        assert replaced == [("double_block", 0), ("single_block", 0)]
    else:
        assert replaced == []


def test_flux_block_replacements_equal_comfyui_blocks(comfy):
    """The out-of-place twins compute exactly what ComfyUI's Flux blocks compute (no grad), for
    both stream orders of the double block, and unpatched Flux cannot be differentiated."""
    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND, SingleStreamBlock

    from doodl_nodes.bridge.inplace_blocks import _double_forward, _single_forward

    ops = comfy.ops.disable_weight_init
    g = torch.Generator().manual_seed(0)

    def init(m):
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5
        return m

    img, txt = torch.randn(2, 16, 64, generator=g), torch.randn(2, 7, 64, generator=g)
    vec = torch.randn(2, 64, generator=g)
    ids = torch.zeros(2, 23, 3)
    ids[:, 7:, 1] = torch.arange(16.0) // 4
    ids[:, 7:, 2] = torch.arange(16.0) % 4
    pe = EmbedND(dim=32, theta=10000, axes_dim=[4, 14, 14])(ids)
    for flipped in (False, True):
        block = init(DoubleStreamBlock(64, 2, 4.0, qkv_bias=True, flipped_img_txt=flipped, operations=ops))
        with torch.no_grad():
            ref = block(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)
            got = _double_forward(block, img.clone(), txt.clone(), vec, pe)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    single = init(SingleStreamBlock(64, 2, 4.0, operations=ops))
    x = torch.cat([txt, img], 1)
    with torch.no_grad():
        assert torch.equal(single(x.clone(), vec=vec, pe=pe), _single_forward(single, x.clone(), vec, pe))
    # ComfyUI's own blocks: the backward pass fails on their in-place add; the twins differentiate
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        single(xg * 1.0, vec=vec, pe=pe).sum().backward()
    _single_forward(single, xg * 1.0, vec, pe).sum().backward()
    assert torch.isfinite(xg.grad).all() and float(xg.grad.abs().max()) > 0


# ----------------------------------------------------------------------------- one-step baseline

@pytest.mark.parametrize("variant", ["cfg_x0_euler", "official"])
@pytest.mark.parametrize("kind", _params())
def test_one_step_baseline_runs(comfy, kind, variant):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from doodl_nodes.nodes.doodl_nodes import DOODLOneStepGuidance

    model, vae, pos, neg, sigmas = _setup(kind)
    outs = []
    with torch.inference_mode():
        for scale in (0.0, 300.0):
            sampler = DOODLOneStepGuidance().get_sampler(vae=vae, scorer=_scorer(), guidance_scale=scale,
                                                         num_crops=0, cut_power=0.3, crop_reduction="auto",
                                                         seed=0, variant=variant)[0]
            outs.append(SamplerCustom().sample(model, True, 7, 2.0, pos, neg, sampler, sigmas,
                                               _latent(kind))[0]["samples"])
    for o in outs:
        assert o.shape == (1, _channels(kind), 8, 8) and torch.isfinite(o).all()
    assert not torch.equal(outs[0], outs[1])   # the scorer's gradient changed the sample


# ------------------------------------------------------------------- conditioning on the graph path

_EXTRA_CONDS = {"eps": [], "v": [], "sdxl": ["y"], "flow": ["y"], "flux": ["y", "guidance"],
                "flux_schnell": ["y", "guidance"]}


@pytest.mark.parametrize("kind", _params())
def test_extra_conditioning_reaches_the_recorded_call(comfy, kind):
    """What a CUDA graph records is ``ChainModel.call_model`` reading the guider's processed conds
    from fixed tensors. On CPU: nothing but the device keeps graphs off (not the conds, not the
    Flux block replacements); the extra conds (SDXL's ADM ``y``, SD3/Flux pooled ``y``, Flux's
    ``guidance``) are stored once, cloned onto the model's device as ordinary tensors; the call
    reads them in place (changing the stored tensor changes the next output, restoring it gives
    the first output bit for bit, as a replay would). Flux schnell has no guidance embedding, so
    its output ignores ``guidance``."""
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.cuda_graphs import graph_blockers

    model, _, pos, neg, sigmas = _setup(kind)
    shape = (1, _channels(kind), 8, 8)

    def fn(chain):
        why = graph_blockers(chain.model_wrap, chain.extra_args, torch.device("cuda"))
        z = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * float(chain.sigmas[0])
        s = chain.sigmas[:1].to(torch.float32).expand(1)
        first = chain.call_model(z, s, True).detach()
        effects = {}
        for name in _EXTRA_CONDS[kind]:
            stored = [c["model_conds"][name].cond for conds in chain.model_wrap.conds.values() for c in conds]
            assert all(t.device == chain.device and not t.is_inference() for t in stored)
            saved = [t.clone() for t in stored]
            for t in stored:
                t.mul_(0.5).add_(0.25)
            changed = chain.call_model(z, s, True).detach()
            for t, old in zip(stored, saved):
                t.copy_(old)
            effects[name] = not torch.equal(changed, first)
        again = chain.call_model(z, s, True).detach()
        return why, chain.graphs, effects, torch.equal(again, first)

    with torch.inference_mode():
        why, graphs, effects, same = run_in_guider(model, pos, neg, 2.0, sigmas, shape, fn, grad=True,
                                                   precision="fp32", cuda_graphs=True)
    assert graphs is None
    assert why == ["not every model weight is on the GPU"], why
    assert same
    expected = {n: not (kind == "flux_schnell" and n == "guidance") for n in _EXTRA_CONDS[kind]}
    assert effects == expected


def test_flux_guidance_node_value_reaches_the_model(comfy):
    """ComfyUI's FluxGuidance node sets the value the guidance embedding sees."""
    from comfy_extras.nodes_flux import FluxGuidance

    from doodl_nodes.bridge.chain import run_in_guider

    model, _, pos, neg, sigmas = _setup("flux")
    with torch.inference_mode():
        pos2 = FluxGuidance().append(pos, 1.5)[0]

    def fn(chain):
        return [float(c["model_conds"]["guidance"].cond) for c in chain.model_wrap.conds["positive"]]

    with torch.inference_mode():
        assert run_in_guider(model, pos2, neg, 1.0, sigmas, (1, 16, 8, 8), fn) == [1.5]


# ------------------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("kind", ARCHS)
def test_edict_with_one_step_is_refused_on_every_architecture(comfy, kind):
    import comfy.samplers as cs

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate

    model, _, pos, neg, _ = _setup(kind)
    with torch.inference_mode():
        one = cs.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 1)
        with pytest.raises(ValueError, match="at least 2 sampling steps.*set chain to 'euler'"):
            _doodl(kind, chain="edict", sigmas=one)
        with pytest.raises(ValueError, match="EDICT Generate.*at least 2 sampling steps"):
            EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=one, seed=0, p=0.93,
                                     leapfrog=True, latent=_latent(kind))


def test_foreign_inplace_block_patch_is_refused_with_a_clear_message(comfy):
    """A block replaced by another patch that runs ComfyUI's in-place block is left alone, and the
    autograd failure becomes an error naming the model and the way out."""
    from doodl_nodes.bridge.inplace_blocks import ModelNotDifferentiable

    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.cuda_graphs import graph_blockers

    model = _setup("flux_schnell")[0].clone()
    model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "single_block", 0)
    with pytest.raises(ModelNotDifferentiable, match=r"Flux \(Flux\).*in place.*without such patches"):
        _doodl("flux_schnell", model=model, iterations=1)
    # a foreign block replacement also keeps CUDA graphs off (the pack's own do not, see above)
    _, _, pos, neg, sigmas = _setup("flux_schnell")

    def fn(chain):
        return graph_blockers(chain.model_wrap, chain.extra_args, torch.device("cuda"))

    with torch.inference_mode():
        why = run_in_guider(model, pos, neg, 1.0, sigmas, (1, 16, 8, 8), fn, grad=True, precision="fp32")
    assert "transformer option 'patches_replace'" in why, why


def test_noise_and_vae_across_latent_spaces_are_refused(comfy):
    from doodl_nodes.bridge.vae import LatentMismatchError

    out = _doodl("sdxl", chain="euler", iterations=1)
    with pytest.raises(ValueError, match="same size, batch and latent channels"):
        out["result"][6].generate_noise(_latent("flux"))
    with pytest.raises(LatentMismatchError, match="vae input makes 4-channel latents"):
        _doodl("flux", vae=_setup("sdxl")[1], iterations=1)
