"""The demo's settings and its three presets (tiny for the test, quick for a CPU, full for a GPU)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["DemoSettings", "PRESETS", "preset"]


@dataclass(frozen=True)
class DemoSettings:
    name: str = "quick"
    # data
    split_seed: int = 0
    test_fraction: float = 0.25
    # unconditional denoiser (EDM preconditioning, MLP on 8x8 pixels)
    den_width: int = 256
    den_depth: int = 3
    den_steps: int = 3000
    den_batch: int = 256
    den_lr: float = 2e-3
    den_ema: float = 0.999
    den_p_mean: float = -1.0
    den_p_std: float = 1.4
    den_seed: int = 0
    # guiding classifier (CNN) and held-out evaluator (MLP): different architectures and seeds
    guide_width: int = 32
    guide_features: int = 64
    guide_seed: int = 1
    eval_width: int = 256
    eval_features: int = 32
    eval_seed: int = 2
    cls_epochs: int = 60
    cls_batch: int = 128
    cls_lr: float = 3e-3
    # sampling (EDICT in sigma space, Karras schedule)
    steps: int = 25
    sigma_min: float = 0.02
    sigma_max: float = 20.0
    rho: float = 7.0
    p: float = 0.93
    # what is generated
    targets: tuple = tuple(range(10))
    seeds: int = 16                # reported seeds 0 .. seeds-1 per target
    val_seeds: int = 8             # seeds for the baseline's scale sweep (disjoint from reported ones)
    val_seed_offset: int = 10_000
    # one-step guidance sweep: every scale, with and without the multi-crop loss
    guidance_scales: tuple = (0.3, 1.0, 3.0, 10.0)
    # guide loss multi-crop (core.crops) on a 16x16 upsampled canvas; 0 crops = plain image
    num_crops: int = 8
    cut_power: float = 0.3
    crop_reduction: str = "mean"
    crop_canvas: int = 16
    # DOODL (core.optimize.DoodlConfig); paper structure, lr and clip scaled to 64-pixel noise
    iterations: int = 50
    lrs: tuple = (0.01, 0.03)      # DOODL learning rates; several = chosen on the validation seeds
    clip: float = 0.1
    momentum: float = 0.9
    perturbation: float = 1e-4
    doodl_seed: int = 0
    # evaluation
    fd_ridge: float = 1e-4

    def denoiser_settings(self) -> dict:
        return {"width": self.den_width, "depth": self.den_depth, "steps": self.den_steps,
                "batch": self.den_batch, "lr": self.den_lr, "ema": self.den_ema,
                "p_mean": self.den_p_mean, "p_std": self.den_p_std, "seed": self.den_seed,
                "split_seed": self.split_seed, "test_fraction": self.test_fraction}

    def classifier_settings(self, role: str) -> dict:
        common = {"epochs": self.cls_epochs, "batch": self.cls_batch, "lr": self.cls_lr,
                  "split_seed": self.split_seed, "test_fraction": self.test_fraction}
        if role == "guide":
            return {"kind": "cnn", "width": self.guide_width, "feature_dim": self.guide_features,
                    "seed": self.guide_seed, **common}
        if role == "evaluator":
            return {"kind": "mlp", "width": self.eval_width, "feature_dim": self.eval_features,
                    "seed": self.eval_seed, **common}
        raise ValueError(role)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["guidance_scales"] = list(self.guidance_scales)
        d["lrs"] = list(self.lrs)
        return d

    def validate(self) -> None:
        if not self.targets or any(not (0 <= int(t) <= 9) for t in self.targets):
            raise ValueError(f"targets must be digits 0-9, got {self.targets}")
        if self.seeds < 2:
            raise ValueError("seeds must be >= 2 (a Fréchet distance needs two samples per class)")
        if self.val_seeds < 1:
            raise ValueError("val_seeds must be >= 1")
        if self.steps < 1 or self.iterations < 1:
            raise ValueError("steps and iterations must be >= 1")
        if not self.guidance_scales:
            raise ValueError("guidance_scales must not be empty")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must be positive learning rates, got {self.lrs}")


PRESETS = {
    # the test: seconds on a CPU, checks plumbing only (the numbers mean nothing)
    "tiny": DemoSettings(name="tiny", den_width=32, den_depth=1, den_steps=60, den_batch=128,
                         den_ema=0.9, cls_epochs=2, steps=4, targets=(0, 1, 7), seeds=2,
                         val_seeds=2, guidance_scales=(1.0, 3.0), num_crops=2, iterations=4,
                         lrs=(0.02, 0.05), clip=0.1),
    # under 5 minutes on a 2-core CPU, training included
    "quick": DemoSettings(name="quick"),
    # for a GPU: a longer-trained, larger denoiser, 50 sampling steps, 4x the seeds. DOODL gets 200
    # iterations and a looser clip here: with this denoiser, 50 iterations at the quick setting's
    # step sizes left the guide's loss high (README: "full setting")
    "full": DemoSettings(name="full", den_width=512, den_depth=4, den_steps=20000, cls_epochs=100,
                         steps=50, seeds=64, val_seeds=16,
                         guidance_scales=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
                         iterations=200, clip=1.0, lrs=(0.1, 0.3, 1.0)),
}


def preset(name: str, **overrides) -> DemoSettings:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    s = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    s.validate()
    return s
