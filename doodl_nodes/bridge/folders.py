"""Model folders of the pack, registered with ComfyUI's ``folder_paths``.

Layout (under ``ComfyUI/models/``; every folder can also come from ``extra_model_paths.yaml``)::

    doodl/              "doodl"            base folder of the pack
    doodl/clip/         "doodl_clip"       CLIP models for the CLIP and aesthetic scorers:
                                           open_clip checkpoint files (.safetensors/.pt/.bin),
                                           open_clip folders (open_clip_config.json + weights),
                                           transformers folders (config.json + weights)
    doodl/aesthetic/    "doodl_aesthetic"  aesthetic heads (LAION linear, improved MLP)
    doodl/wsdan/        "doodl_wsdan"      WS-DAN checkpoints (bird/dog/aircraft .pth.tar)
    doodl/hps/          "doodl_hps"        HPSv2 / HPSv2.1 checkpoints (HPS_v2*_compressed.pt)
    doodl/imagereward/  "doodl_imagereward" ImageReward.pt + med_config.json + vocab.txt

Registration merges, never overwrites (comfyui-notes §4.3): paths a user configured for any of
these keys stay first, the defaults are appended, and extension sets are unioned. Every base path
of ``doodl`` (the default and the user's) contributes its ``clip``/``aesthetic``/``wsdan``/``hps``/
``imagereward`` sub-folders. PickScore is a transformers CLIP folder in ``doodl/clip``. ComfyUI's CLIP_VISION models stay in its own ``clip_vision`` folder.

Nothing here touches the network, except :func:`download_file`, which the nodes call only when the
user picks a "download:" entry.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import folder_paths

from ..scorers.clip_models import clip_folder_kind

__all__ = ["BASE", "KINDS", "register_folders", "folder_list", "clip_model_list", "resolve_file",
           "resolve_clip_model", "first_folder", "download_file", "MissingModelError"]

BASE = "doodl"
#: folder_paths key -> (sub-folder of models/doodl, what goes there)
KINDS = {
    "doodl_clip": ("clip", "CLIP models (open_clip files or folders, transformers folders)"),
    "doodl_aesthetic": ("aesthetic", "aesthetic heads"),
    "doodl_wsdan": ("wsdan", "WS-DAN checkpoints"),
    "doodl_hps": ("hps", "HPSv2 / HPSv2.1 checkpoints"),
    "doodl_imagereward": ("imagereward", "ImageReward.pt with med_config.json and vocab.txt"),
}
EXTENSIONS = set(folder_paths.supported_pt_extensions) | {".safetensors", ".sft", ".tar"}
FOLDER_SUFFIX = "/"


class MissingModelError(FileNotFoundError):
    """A model file or folder the node needs is not in any registered folder."""


def _merge(name: str, path: str, extensions: set[str]) -> None:
    folder_paths.add_model_folder_path(name, path)  # appends; keeps users' paths first
    paths, exts = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(extensions))


def register_folders(create: bool = False) -> None:
    """Register ``doodl`` and its sub-kinds (idempotent). ``create`` makes the default folders
    (off at import: no filesystem side effects; downloads create their folder)."""
    default_base = os.path.join(folder_paths.models_dir, BASE)
    _merge(BASE, default_base, EXTENSIONS)
    for name, (sub, _) in KINDS.items():
        for base in folder_paths.get_folder_paths(BASE):
            _merge(name, os.path.join(base, sub), EXTENSIONS)
        if create:
            try:
                os.makedirs(os.path.join(default_base, sub), exist_ok=True)
            except OSError as exc:  # read-only install: dropdowns are just empty
                logging.debug("DOODL: cannot create %s: %s", default_base, exc)


def first_folder(name: str) -> str:
    """Where a download for ``name`` goes: its first existing (or first) folder."""
    paths = folder_paths.get_folder_paths(name)
    for p in paths:
        if os.path.isdir(p):
            return p
    return paths[0]


def folder_list(name: str) -> list[str]:
    """Files of a kind, for a dropdown (ComfyUI's cached, extension-filtered listing)."""
    return folder_paths.get_filename_list(name)


def _model_dirs(name: str) -> dict[str, str]:
    """Relative name (with a trailing "/") -> absolute path of model folders under ``name``."""
    found = {}
    for root in folder_paths.get_folder_paths(name):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            rel = os.path.relpath(dirpath, root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth and clip_folder_kind(dirpath):
                found.setdefault(rel.replace(os.sep, "/") + FOLDER_SUFFIX, dirpath)
                dirnames[:] = []  # a model folder's contents are not separate entries
            elif depth >= 3:
                dirnames[:] = []
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def clip_model_list() -> list[str]:
    """Entries of ``doodl_clip``: model folders ("name/") and loose checkpoint files."""
    dirs = _model_dirs("doodl_clip")
    files = [f for f in folder_paths.get_filename_list("doodl_clip")
             if not any(f.replace(os.sep, "/").startswith(d) for d in dirs)]
    return sorted(dirs) + files


def _searched(name: str) -> str:
    return ", ".join(folder_paths.get_folder_paths(name))


def resolve_file(name: str, filename: str, what: str, source: str) -> str:
    """Absolute path of ``filename`` in folder kind ``name``, or an error saying where to get it."""
    path = folder_paths.get_full_path(name, filename) if filename else None
    if path is None or not os.path.isfile(path):
        raise MissingModelError(
            f"{what} '{filename}' not found in {_searched(name)}. Get it from {source} and put it "
            f"in one of those folders (or add a '{name}' path to extra_model_paths.yaml).")
    return path


def resolve_clip_model(entry: str) -> tuple[str, str]:
    """``("folder", path)`` or ``("file", path)`` for an entry of :func:`clip_model_list`."""
    if entry.endswith(FOLDER_SUFFIX):
        path = _model_dirs("doodl_clip").get(entry)
        if path is None:
            raise MissingModelError(
                f"CLIP model folder '{entry}' not found in {_searched('doodl_clip')}: it needs "
                f"open_clip_config.json (open_clip) or config.json (transformers) and the weights, "
                f"e.g. a copy of a Hugging Face laion/CLIP-* or openai/clip-* repository")
        return "folder", path
    return "file", resolve_file("doodl_clip", entry, "CLIP checkpoint",
                                "open_clip (github.com/mlfoundations/open_clip, pretrained tags) "
                                "or the Hugging Face hub")


def download_file(url: str, name: str, filename: str, timeout: float = 60.0) -> str:
    """Download ``url`` into the first ``name`` folder as ``filename`` (atomic rename); the path.

    Only called on explicit user action (a "download:" dropdown entry). The file is then read with
    the same safe loader as any other (safetensors or weights-only torch.load).
    """
    folder = Path(first_folder(name))
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / filename
    if dest.is_file():
        return str(dest)
    logging.info("DOODL: downloading %s -> %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except Exception as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise MissingModelError(f"could not download {url} to {dest}: {exc}. Download it by "
                                f"hand and put it in {folder}") from exc
    return str(dest)
