"""Command line: ``python -m doodl_nodes.demo [--quick | --preset NAME] [options]``."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .settings import PRESETS, preset

__all__ = ["main", "build_parser"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "doodl_demo"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m doodl_nodes.demo",
        description="Miniature offline replication of DOODL vs one-step classifier guidance on "
                    "scikit-learn's handwritten digits: trains (and caches) a small diffusion model "
                    "and two classifiers, generates each target digit with unguided EDICT, one-step "
                    "guidance and DOODL, and writes a results table, sample grids and loss curves.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="the CPU setting: a few minutes on 2 cores, training included")
    group.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="settings preset (default: full; --quick is --preset quick; tiny is for tests)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--out", type=Path, default=Path("demo_output"),
                   help="output folder for results.md/json and the PNGs (default: ./demo_output)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where trained weights are cached (default: {default_cache_dir()})")
    p.add_argument("--seeds", type=int, default=None, help="reported seeds per target digit")
    p.add_argument("--targets", default=None, help="comma-separated target digits, e.g. 0,3,8")
    p.add_argument("--steps", type=int, default=None, help="EDICT sampling steps")
    p.add_argument("--iterations", type=int, default=None, help="DOODL iterations")
    p.add_argument("--scales", default=None, help="comma-separated one-step guidance scales to sweep")
    p.add_argument("--lrs", default=None,
                   help="comma-separated DOODL learning rates (several: chosen on validation seeds)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads while the demo runs (default 1: the networks are tiny, and "
                        "more threads only help on an idle machine; 0 keeps torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="print only the results table")
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
    return dev


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    name = "quick" if args.quick else (args.preset or "full")
    overrides = {
        "seeds": args.seeds, "steps": args.steps, "iterations": args.iterations,
        "targets": tuple(int(t) for t in args.targets.split(",")) if args.targets else None,
        "guidance_scales": tuple(float(v) for v in args.scales.split(",")) if args.scales else None,
        "lrs": tuple(float(v) for v in args.lrs.split(",")) if args.lrs else None,
    }
    try:
        settings = preset(name, **overrides)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")
    device = _device(args.device)
    if name == "full" and device.type == "cpu" and not args.quiet:
        print("note: the full setting is meant for a GPU; on a CPU it takes much longer than "
              "--quick (minutes to an hour)", file=sys.stderr)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from .experiment import run_demo  # after argument parsing: --help stays instant

    command = "python -m doodl_nodes.demo" + ("" if argv is None and len(sys.argv) <= 1 else
                                              " " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    results = run_demo(settings, args.out, args.cache_dir or default_cache_dir(), device, log=log,
                       show_progress=not (args.no_progress or args.quiet), command=command,
                       cpu_threads=args.threads if args.threads > 0 else None)
    print(results["markdown"])
    if not args.quiet:
        print("\nwrote:", file=sys.stderr)
        for path in results["files"].values():
            print(f"  {Path(path).resolve()}", file=sys.stderr)
    return 0
