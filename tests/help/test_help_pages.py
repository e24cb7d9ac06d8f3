"""Every node class has a help page in ``js/docs/`` whose tables match the node (see help_pages.py).

The node ids come from the ``NODE_CLASS_MAPPINGS`` literals of ``doodl_nodes/nodes/*.py`` (read with
``ast``, so the page-existence and format checks run without ComfyUI), and, with ComfyUI present,
from the imported classes themselves: their ``INPUT_TYPES()`` and ``RETURN_TYPES`` are what the
Inputs and Outputs tables are compared with. A node added later without a page fails here.
"""
from __future__ import annotations

import textwrap

import pytest

from tests.comfyui_env import require_comfyui
from tests.help import help_pages as hp

NODE_IDS = hp.node_ids()


def test_node_ids_are_found():
    # the 11 nodes of the first release; more may be added, none removed (workflow identity)
    first = {"EDICTSampler", "EDICTInversion", "EDICTGenerate", "DOODLOptimize", "DOODLOneStepGuidance",
             "DOODLCLIPTextScorer", "DOODLCLIPImageScorer", "DOODLAestheticScorer", "DOODLWSDANScorer",
             "DOODLSymmetryScorer", "DOODLCombineScorers"}
    assert first <= set(NODE_IDS)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_node_has_a_page(node_id):
    path = hp.page_path(node_id)
    assert path.is_file(), (f"{node_id} has no help page: write {path.relative_to(hp.REPO)} "
                            f"(format: tests/help/help_pages.py)")


def test_every_page_belongs_to_a_node():
    pages = {p.stem for p in hp.DOCS_DIR.glob("*.md")}
    locale_dirs = {p.name for p in hp.DOCS_DIR.iterdir() if p.is_dir() and p.name != "images"}
    assert pages <= set(NODE_IDS), f"pages without a node: {sorted(pages - set(NODE_IDS))}"
    assert locale_dirs <= set(NODE_IDS), f"locale folders without a node: {sorted(locale_dirs - set(NODE_IDS))}"


def test_web_directory_docs_hold_no_scripts():
    # ComfyUI loads every .js file under WEB_DIRECTORY (js/) as a frontend extension
    assert not list(hp.DOCS_DIR.rglob("*.js"))


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_format(node_id):
    path = hp.page_path(node_id)
    if not path.is_file():
        pytest.fail(f"{node_id}: no page (see test_every_node_has_a_page)")
    problems = hp.structure_problems(hp.parse_page(path), hp.display_names().get(node_id))
    assert problems == [], f"{path.name}:\n  " + "\n  ".join(problems)


def test_pages_match_the_node_classes():
    """Inputs/Outputs tables == the imported node classes' inputs and outputs (names, order, types,
    defaults)."""
    require_comfyui()
    from doodl_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert sorted(NODE_CLASS_MAPPINGS) == NODE_IDS, (
        "the registered node ids differ from the NODE_CLASS_MAPPINGS = {...} literals in "
        "doodl_nodes/nodes/*.py (write each module's mapping as a dict literal so pages can be checked "
        "without ComfyUI)")
    report = {}
    for node_id, cls in sorted(NODE_CLASS_MAPPINGS.items()):
        page = hp.parse_page(hp.page_path(node_id))
        problems = hp.page_problems(page, cls, NODE_DISPLAY_NAME_MAPPINGS.get(node_id))
        if problems:
            report[node_id] = problems
    assert report == {}, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in report.items())


# ------------------------------------------------------------------ the checker itself can fail

class _FakeNode:
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "log")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "m"}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                             "mode": (["fast", "exact"], {"default": "exact"}),
                             "on": ("BOOLEAN", {"default": True})},
                "optional": {"lr": ("FLOAT", {"default": 1e-3})},
                "hidden": {"unique_id": "UNIQUE_ID"}}


GOOD = textwrap.dedent("""\
    # Fake Node
    A node used to test the help page checker: it checks that the checker accepts a right page.

    ## Inputs

    | Input | Type | Default / range | What it does |
    |---|---|---|---|
    | `model` | MODEL | — | The diffusion model to use. |
    | `steps` | INT | `20` (1 to 100) | Number of steps to run. |
    | `mode` | COMBO | `exact` (`fast`, `exact`) | How to run the steps. |
    | `on` | BOOLEAN | `true` | Whether it is switched on. |
    | `lr` | FLOAT | `0.001` (optional) | Learning rate \\| step size. |

    ## Outputs

    | Output | Type | What it is |
    |---|---|---|
    | `latent` | LATENT | The resulting latent. |
    | `log` | STRING | A JSON log of the run. |

    ## Cost
    One model call.

    ## Typical settings
    The defaults.

    ## Model files
    None.
    """)


def _problems(tmp_path, text):
    path = tmp_path / "FakeNode.md"
    path.write_text(text, encoding="utf-8")
    return hp.page_problems(hp.parse_page(path), _FakeNode, "Fake Node")


def test_checker_accepts_a_right_page(tmp_path):
    assert _problems(tmp_path, GOOD) == []


@pytest.mark.parametrize("change, expect", [
    (("| `on` | BOOLEAN | `true` | Whether it is switched on. |\n", ""), "missing ['on']"),
    (("| `log` | STRING | A JSON log of the run. |\n", ""), "Outputs table lists"),
    (("`20` (1 to 100)", "`25` (1 to 100)"), "default 20"),
    (("`exact` (`fast`, `exact`)", "`fast`"), "default `exact`"),
    (("| `on` | BOOLEAN | `true`", "| `on` | BOOLEAN | `false`"), "default True"),
    (("`0.001` (optional)", "`0.01` (optional)"), "default 0.001"),
    (("| `steps` | INT |", "| `steps` | FLOAT |"), "should be 'INT'"),
    (("| `latent` | LATENT |", "| `latent` | IMAGE |"), "should be 'LATENT'"),
    (("# Fake Node", "# Fake"), "display name"),
    (("## Cost\nOne model call.\n\n", ""), "missing sections"),
    (("| `model` | MODEL |", "| model | MODEL |"), "backticks"),
    (("| `model` | MODEL | — | The diffusion model to use. |\n| `steps` | INT | `20` (1 to 100) | Number of steps to run. |\n",
      "| `steps` | INT | `20` (1 to 100) | Number of steps to run. |\n| `model` | MODEL | — | The diffusion model to use. |\n"),
     "order"),
    (("## Model files\nNone.\n", "## Model files\n![x](images/missing.png)\n"), "missing.png not found"),
])
def test_checker_catches_drift(tmp_path, change, expect):
    old, new = change
    assert old in GOOD
    problems = _problems(tmp_path, GOOD.replace(old, new))
    assert any(expect in p for p in problems), problems
