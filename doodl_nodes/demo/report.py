"""The results table (markdown), built only from the measured numbers."""
from __future__ import annotations

__all__ = ["results_markdown", "summary_lines"]

LABELS = {
    "real_train": "real training images (reference)",
    "unguided": "unguided EDICT",
    "one_step": "one-step guidance",
    "doodl": "DOODL",
}


def _method_label(name: str, results: dict) -> str:
    if name == "one_step":
        c = results["chosen_one_step"]
        return f"one-step guidance (scale {c['scale']:g}{', crops' if c['crops'] else ''})"
    if name == "doodl":
        return f"DOODL ({results['settings']['iterations']} iterations, lr {results['chosen_doodl']['lr']:g})"
    return LABELS[name]


def summary_lines(results: dict) -> list[str]:
    """Plain statements of who wins what, computed from the numbers."""
    m = results["metrics"]
    d, o = m["doodl"], m["one_step"]
    targets = list(d["per_target"])
    acc_wins = sum(d["per_target"][k]["eval_accuracy"] > o["per_target"][k]["eval_accuracy"] for k in targets)
    acc_ties = sum(d["per_target"][k]["eval_accuracy"] == o["per_target"][k]["eval_accuracy"] for k in targets)
    fd_wins = sum(d["per_target"][k]["fd"] < o["per_target"][k]["fd"] for k in targets)
    lines = [
        f"- Held-out accuracy on the target: DOODL {d['eval_accuracy']:.3f} vs one-step "
        f"{o['eval_accuracy']:.3f} ({'DOODL higher' if d['eval_accuracy'] > o['eval_accuracy'] else 'DOODL not higher'}); "
        f"DOODL is higher on {acc_wins} of {len(targets)} targets, tied on {acc_ties}.",
        f"- Per-class Fréchet distance (lower is better): DOODL {d['fd_per_class']:.2f} vs one-step "
        f"{o['fd_per_class']:.2f} ({'DOODL lower' if d['fd_per_class'] < o['fd_per_class'] else 'DOODL not lower'}); "
        f"DOODL is lower on {fd_wins} of {len(targets)} targets.",
        f"- Cost: DOODL spent {d['cost_vs_unguided'] / max(o['cost_vs_unguided'], 1e-12):.0f}x the model "
        f"evaluations of one-step guidance per image ({d['forward_per_image']:.0f} forward + "
        f"{d['backward_per_image']:.0f} backward vs {o['forward_per_image']:.0f} + "
        f"{o['backward_per_image']:.0f}), not counting the validation sweeps.",
        f"- Transfer: the guiding classifier itself rates DOODL {d['guide_accuracy']:.3f} and one-step "
        f"{o['guide_accuracy']:.3f} correct, the held-out evaluator {d['eval_accuracy']:.3f} and "
        f"{o['eval_accuracy']:.3f}; the gap is guidance that satisfies the guide but not the evaluator.",
    ]
    return lines


def results_markdown(results: dict) -> str:
    s = results["settings"]
    env = results["environment"]
    m = results["metrics"]
    models = results["models"]
    out = [f"# DOODL vs one-step guidance on handwritten digits (preset `{s['name']}`)", ""]
    if results.get("command"):
        out += [f"Command: `{results['command']}`", ""]
    machine = env.get("gpu") or f"{env['processor']}, {env['cpu_count']} CPU cores"
    out += [f"Machine: {machine} (device `{env['device']}`), torch {env['torch']}, "
            f"total time {results['total_seconds']:.0f} s.", ""]
    out += [f"{len(s['targets'])} targets x {s['seeds']} seeds (the same starting noise for every "
            f"method); EDICT with {s['steps']} steps (p = {s['p']}); model evaluations are per image "
            "(forward = denoiser calls, backward = vector-Jacobian products through the denoiser); "
            "cost counts a backward as two forwards and is relative to one unguided EDICT sample.", ""]
    out += ["| method | held-out acc. on target (higher better) | guide acc. | per-class FD (lower better) "
            "| pooled FD | forward / backward evals per image | cost (x unguided) | time (s) |",
            "|---|---|---|---|---|---|---|---|"]
    for name in ("real_train", "unguided", "one_step", "doodl"):
        r = m[name]
        evals = "-" if name == "real_train" else f"{r['forward_per_image']:.0f} / {r['backward_per_image']:.0f}"
        cost = "-" if name == "real_train" else f"{r['cost_vs_unguided']:.1f}"
        secs = "-" if name == "real_train" else f"{r['seconds']:.1f}"
        out.append(f"| {_method_label(name, results)} | {r['eval_accuracy']:.3f} | {r['guide_accuracy']:.3f} "
                   f"| {r['fd_per_class']:.2f} | {r['fd_pooled']:.2f} | {evals} | {cost} | {secs} |")
    out += ["", "Reading the numbers:", ""] + summary_lines(results) + [""]
    out += ["The reference row holds real training images of each target, as many per class as "
            "generated; the evaluator was trained on them, so its accuracy there is optimistic, and "
            "their per-class FD is the floor that sample size allows. Unguided samples are "
            "unconditional, so they are scored against every target (accuracy near 1/10). The "
            "pooled FD compares all distinct generated images with all held-out images of the "
            "targets, whatever their class: a check of realism and diversity.", ""]

    out += ["## Per target", "",
            "| target | unguided acc. | one-step acc. | DOODL acc. | one-step FD | DOODL FD |",
            "|---|---|---|---|---|---|"]
    for k in m["doodl"]["per_target"]:
        u, o, d = (m[n]["per_target"][k] for n in ("unguided", "one_step", "doodl"))
        out.append(f"| {k} | {u['eval_accuracy']:.2f} | {o['eval_accuracy']:.2f} | {d['eval_accuracy']:.2f} "
                   f"| {o['fd']:.2f} | {d['fd']:.2f} |")

    out += ["", f"## One-step guidance sweep ({s['val_seeds']} validation seeds per target, disjoint "
            "from the reported seeds)", "",
            "| scale | multi-crop loss | held-out acc. | per-class FD | guide acc. |",
            "|---|---|---|---|---|"]
    chosen = results["chosen_one_step"]
    for r in results["sweep"]:
        mark = " (chosen)" if (r["scale"], r["crops"]) == (chosen["scale"], chosen["crops"]) else ""
        out.append(f"| {r['scale']:g}{mark} | {'yes' if r['crops'] else 'no'} | {r['eval_accuracy']:.3f} "
                   f"| {r['fd_per_class']:.2f} | {r['guide_accuracy']:.3f} |")
    sweep_fwd = sum(r["forward_per_image"] for r in results["sweep"])
    sweep_bwd = sum(r["backward_per_image"] for r in results["sweep"])
    out += ["", f"The sweep cost {sweep_fwd:.0f} forward + {sweep_bwd:.0f} backward evaluations per "
            "validation image in all.", ""]

    if results.get("doodl_sweep"):
        out += ["## DOODL learning-rate sweep (same validation seeds)", "",
                "| lr | held-out acc. | per-class FD | guide acc. | guide CE first -> last iteration |",
                "|---|---|---|---|---|"]
        for r in results["doodl_sweep"]:
            mark = " (chosen)" if r["lr"] == results["chosen_doodl"]["lr"] else ""
            out.append(f"| {r['lr']:g}{mark} | {r['eval_accuracy']:.3f} | {r['fd_per_class']:.2f} "
                       f"| {r['guide_accuracy']:.3f} | {r['guide_ce_first']:.2f} -> {r['guide_ce_last']:.2f} |")
        out += ["", f"The sweep cost {sum(r['forward_per_image'] for r in results['doodl_sweep']):.0f} "
                f"forward + {sum(r['backward_per_image'] for r in results['doodl_sweep']):.0f} backward "
                "evaluations per validation image in all.", ""]

    dl = results["doodl"]
    losses = dl["guide_ce"]
    out += ["## DOODL", "",
            f"Settings: {s['iterations']} iterations, lr {results['chosen_doodl']['lr']:g}, clip {s['clip']:g}, momentum "
            f"{s['momentum']:g}, perturbation {s['perturbation']:g}, renormalized, tied latents; loss = "
            f"guide cross-entropy{' over ' + str(s['num_crops']) + ' crops (' + s['crop_reduction'] + ')' if s['num_crops'] else ''}. "
            f"Status: {dl['status']}.",
            "",
            f"Guide cross-entropy of the current images, mean per image (first -> last iteration): "
            f"{losses[0]:.3f} -> {losses[-1]:.3f}; after the last update: {m['doodl']['guide_ce']:.3f}. "
            f"The optimized objective{' (random crops, so noisier)' if s['num_crops'] else ''}: "
            f"{dl['objective'][0]:.3f} -> {dl['objective'][-1]:.3f}."
            if losses else "No iterations ran.", ""]
    if dl["warnings"]:
        out += ["Warnings: " + "; ".join(dl["warnings"]), ""]

    out += ["## Models", "",
            f"- Denoiser: MLP {s['den_width']} wide x {s['den_depth']} blocks, EDM preconditioning, "
            f"{s['den_steps']} training steps (final loss {models['denoiser'].get('final_loss', float('nan')):.4f}).",
            f"- Guide: CNN, held-out accuracy {models['guide']['test_accuracy']:.3f}.",
            f"- Evaluator: MLP, held-out accuracy {models['evaluator']['test_accuracy']:.3f} "
            f"(features: its {s['eval_features']}-d penultimate layer).", ""]
    out += ["Files: " + ", ".join(f"`{k}`" for k in ("samples_unguided.png", "samples_one_step.png",
                                                      "samples_doodl.png", "samples_real.png",
                                                      "loss_curves.png", "results.json")), ""]
    return "\n".join(out)
