"""The pack's EDICT (sigma space) equals the float64 port of the official EDICT/DOODL stepping
(alpha space): generation, inversion, gradients (both backprop modes) and sub-chain parity."""
from __future__ import annotations

import math

import pytest
import torch

from doodl_nodes.core.backprop import edict_value_and_grad
from doodl_nodes.core.edict import edict_invert, edict_sample
from tests.reference import official_edict as off
from tests.reference.official_scheduler import ddim_schedule, sigmas_of, without_final_identity
from tests.reference.toy_eps import ToyEps, ToyLoss, rel_err, sigma_denoiser, toy_latent

P = 0.93
TOL = 1e-10


def _pair(seed=0):
    """A distinct starting pair (alpha space), so a swapped x/y order at step 0 would show."""
    x = toy_latent(seed)
    return x, x + 0.3 * toy_latent(seed + 100)


@pytest.mark.parametrize("num_steps, scale, leapfrog", [
    (50, 7.5, True), (50, 1.0, True), (10, 7.5, True), (10, 3.0, False)])
def test_sample_matches_official(num_steps, scale, leapfrog):
    model = ToyEps()
    official = ddim_schedule(num_steps)
    steps = without_final_identity(official)  # T - 1 steps: 980 -> ... -> 0 for T = 50
    sigmas = sigmas_of(steps)
    a_start, a_end = steps[0].alpha, steps[-1].alpha_prev
    x_vp, y_vp = _pair()
    eps = off.cfg(model, scale)

    ref_x, ref_y = off.edict_generate(eps, x_vp, y_vp, steps, P, leapfrog)
    got_x, got_y = edict_sample(sigma_denoiser(model, scale, steps), x_vp / math.sqrt(a_start),
                                y_vp / math.sqrt(a_start), sigmas, p=P, leapfrog=leapfrog)
    got_x, got_y = got_x * math.sqrt(a_end), got_y * math.sqrt(a_end)
    ex, ey = rel_err(got_x, ref_x), rel_err(got_y, ref_y)
    print(f"T={num_steps} cfg={scale} leapfrog={leapfrog}: rel err x0 {ex:.2e}, y0 {ey:.2e}")
    assert ex < TOL and ey < TOL, (ex, ey)
    assert rel_err(ref_x, ref_y) > 1e-4  # the two sequences really differ (the test can fail)

    # The official T-th step (t = 0 -> final alpha = alphas_cumprod[0]) has no length: its DDIM
    # updates are the identity and only its mixing acts. The full official output is therefore
    # one more mixing of the pack's output.
    full_x, full_y = off.edict_generate(eps, x_vp, y_vp, official, P, leapfrog)
    mx, my = off.mix(got_x, got_y, P)
    assert rel_err(mx, full_x) < TOL and rel_err(my, full_y) < TOL


@pytest.mark.parametrize("num_steps, scale", [(50, 7.5), (10, 1.0)])
def test_invert_matches_official(num_steps, scale):
    model = ToyEps()
    steps = without_final_identity(ddim_schedule(num_steps))
    sigmas = sigmas_of(steps)
    a_start, a_end = steps[0].alpha, steps[-1].alpha_prev
    x0_vp, y0_vp = _pair(seed=3)

    ref_x, ref_y = off.edict_invert(off.cfg(model, scale), x0_vp, y0_vp, steps, P)
    den = sigma_denoiser(model, scale, steps)
    got_x, got_y = edict_invert(den, x0_vp / math.sqrt(a_end), y0_vp / math.sqrt(a_end), sigmas, p=P)
    ex, ey = rel_err(got_x * math.sqrt(a_start), ref_x), rel_err(got_y * math.sqrt(a_start), ref_y)
    print(f"invert T={num_steps} cfg={scale}: rel err xT {ex:.2e}, yT {ey:.2e}")
    assert ex < TOL and ey < TOL, (ex, ey)
    # the port's inversion really inverts the port's generation
    back_x, back_y = off.edict_generate(off.cfg(model, scale), ref_x, ref_y, steps, P)
    assert rel_err(back_x, x0_vp) < 1e-9 and rel_err(back_y, y0_vp) < 1e-9


@pytest.mark.parametrize("mode", ["checkpoint", "reversible"])
def test_gradients_match_autograd_through_official(mode):
    model, loss = ToyEps(), ToyLoss()
    num_steps, scale = 50, 7.5
    steps = without_final_identity(ddim_schedule(num_steps))
    sigmas = sigmas_of(steps)
    c_start, c_end = math.sqrt(steps[0].alpha), math.sqrt(steps[-1].alpha_prev)
    x_vp, y_vp = _pair(seed=5)

    # plain float64 autograd through the port, in alpha space
    xr, yr = x_vp.clone().requires_grad_(True), y_vp.clone().requires_grad_(True)
    ox, oy = off.edict_generate(off.cfg(model, scale), xr, yr, steps, P)
    ref_loss = 0.5 * (loss(ox) + loss(oy))
    gx_vp, gy_vp = torch.autograd.grad(ref_loss, (xr, yr))

    # the pack in sigma space: x_vp = c_start * z at the start, x0_vp = c_end * z0 at the end
    def objective(x0, y0):
        return 0.5 * (loss(c_end * x0) + loss(c_end * y0))

    val, gx, gy = edict_value_and_grad(sigma_denoiser(model, scale, steps), objective,
                                       x_vp / c_start, y_vp / c_start, sigmas, p=P, mode=mode)
    # chain rule: d/dz = c_start * d/dx_vp
    el = abs(float(val) - float(ref_loss.detach())) / abs(float(ref_loss.detach()))
    ex, ey = rel_err(gx, c_start * gx_vp), rel_err(gy, c_start * gy_vp)
    print(f"grad {mode}: rel err loss {el:.2e}, grad x {ex:.2e}, grad y {ey:.2e}")
    assert el < TOL and ex < TOL and ey < TOL, (el, ex, ey)
    assert rel_err(gx_vp, gy_vp) > 1e-3  # not a symmetric case


@pytest.mark.parametrize("start", [3, 4])
def test_sub_chain_parity(start):
    """A tail sub-chain ``sigmas[start:]`` with ``start_index=start``.

    The official loops restart ``enumerate`` at 0 on a sub-chain (EDICT: ``timesteps[t_limit:]``
    forward and ``orig_i = len(timesteps) - (i+1)`` backward; DOODL: the optimization loop over
    ``timesteps[-opt_t:]``), so their parity is relative to the sub-chain's start. The pack counts
    from the absolute index in the full SIGMAS, which is the port with ``index_offset=start``. For
    an even start both conventions coincide (and the pack equals the official relative counting);
    for an odd start they differ, and the pack equals the port on the full-index parity.
    """
    model = ToyEps()
    scale = 7.5
    full = without_final_identity(ddim_schedule(10))
    steps = full[start:]
    sigmas = sigmas_of(full)[start:]
    a_start, a_end = steps[0].alpha, steps[-1].alpha_prev
    x_vp, y_vp = _pair(seed=7)
    eps = off.cfg(model, scale)
    den = sigma_denoiser(model, scale, full)

    ref_abs = off.edict_generate(eps, x_vp, y_vp, steps, P, index_offset=start)
    ref_rel = off.edict_generate(eps, x_vp, y_vp, steps, P, index_offset=0)  # official counting
    got = edict_sample(den, x_vp / math.sqrt(a_start), y_vp / math.sqrt(a_start), sigmas, p=P,
                       start_index=start)
    errs = [rel_err(g * math.sqrt(a_end), r) for g, r in zip(got, ref_abs)]
    print(f"sub-chain start {start}: rel err vs absolute-parity port {max(errs):.2e}")
    assert max(errs) < TOL, errs
    if start % 2 == 0:
        assert max(rel_err(g * math.sqrt(a_end), r) for g, r in zip(got, ref_rel)) < TOL
    else:
        diff = rel_err(ref_abs[0], ref_rel[0])
        print(f"  official (restarted) vs absolute parity on this sub-chain differ by {diff:.2e}")
        assert diff > 1e-4  # the parity convention matters here

    # inversion of the same sub-chain
    inv_ref = off.edict_invert(eps, ref_abs[0], ref_abs[1], steps, P, index_offset=start)
    inv = edict_invert(den, got[0], got[1], sigmas, p=P, start_index=start)
    errs = [rel_err(g * math.sqrt(a_start), r) for g, r in zip(inv, inv_ref)]
    assert max(errs) < TOL, errs
    assert rel_err(inv_ref[0], x_vp) < 1e-9
