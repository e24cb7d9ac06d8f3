"""Did ``[project].version`` in pyproject.toml go up between two commits? (the publish workflow's gate)

    python3 .github/scripts/version_bumped.py [--base REV] [--head REV] [--repo DIR]

Prints GitHub Actions outputs: ``bumped=true|false``, ``version=<head version>``, ``previous=<base
version or empty>``. ``--base`` is the commit before the push (``github.event.before``); when it is
empty, all zeros (a new branch) or unknown to the clone, the parent of ``--head`` is used, and with
no parent at all the version counts as new. Versions are compared as X.Y.Z numbers (the Registry's
semver); a head version that is not X.Y.Z is an error (exit code 1), so a bad bump never publishes.
Standard library only (Python 3.11+ for tomllib).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib

SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)


def version_at(repo: str, rev: str) -> str | None:
    """``[project].version`` of pyproject.toml at ``rev`` (None if the commit or file is missing)."""
    shown = _git(repo, "show", f"{rev}:pyproject.toml")
    if shown.returncode != 0:
        return None
    return str(tomllib.loads(shown.stdout).get("project", {}).get("version", "")) or None


def parse(version: str) -> tuple[int, int, int]:
    m = SEMVER.match(version or "")
    if not m:
        raise ValueError(f"[project].version {version!r} is not X.Y.Z (semantic versioning)")
    return tuple(int(g) for g in m.groups())


def resolve_base(repo: str, base: str | None, head: str) -> str | None:
    if base and set(base) != {"0"} and _git(repo, "cat-file", "-e", f"{base}^{{commit}}").returncode == 0:
        return base
    parent = _git(repo, "rev-parse", "--verify", "-q", f"{head}^")
    return parent.stdout.strip() if parent.returncode == 0 else None


def check(repo: str = ".", base: str | None = None, head: str = "HEAD") -> dict:
    new = version_at(repo, head)
    if new is None:
        raise ValueError(f"no pyproject.toml with [project].version at {head}")
    new_t = parse(new)
    base_rev = resolve_base(repo, base, head)
    old = version_at(repo, base_rev) if base_rev else None
    try:
        bumped = old is None or new_t > parse(old)
    except ValueError:  # the previous version was not X.Y.Z: any valid new one is a bump
        bumped = True
    return {"bumped": "true" if bumped else "false", "version": new, "previous": old or ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="", help="the commit before the push (github.event.before)")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--repo", default=".")
    args = ap.parse_args(argv)
    try:
        out = check(args.repo, args.base or None, args.head)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, value in out.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
