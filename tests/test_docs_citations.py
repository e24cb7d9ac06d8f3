"""Citations of maintainer notes point inside the repository, at sections that exist."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/maintainers/([\w.-]+\.md)`?(?:\s*§\s*(\d+(?:\.\d+)*))?")
#: names of the design notes that lived outside the repository; citing them is not allowed
OUTSIDE = re.compile(r"(comfyui|reference)-notes")
TEXT = (".py", ".md", ".js", ".toml", ".txt", ".json", ".yaml", ".yml")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / f for f in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):   # not a git checkout (an unpacked archive)
        files = [p for p in REPO.rglob("*") if ".git" not in p.parts and ".cache" not in p.parts]
    return [f for f in files if f.suffix in TEXT and f.is_file()]


def _sections(doc: Path) -> set[str]:
    """Section numbers of a markdown file: '## 1. Title' -> '1', '### 1.2 Title' -> '1.2'."""
    return {m.group(1) for m in re.finditer(r"^#+\s+(\d+(?:\.\d+)*)\.?\s", doc.read_text(encoding="utf-8"), re.M)}


def test_every_cited_maintainer_doc_and_section_exists():
    cited, missing = 0, []
    for f in _tracked_text_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in CITATION.finditer(text):
            cited += 1
            doc = REPO / "docs" / "maintainers" / m.group(1)
            where = f"{f.relative_to(REPO)}: {m.group(0)}"
            if not doc.is_file():
                missing.append(f"{where} (no such file)")
            elif m.group(2) and m.group(2) not in _sections(doc):
                missing.append(f"{where} (no section {m.group(2)} in {doc.name})")
    assert not missing, "\n".join(missing)
    assert cited >= 8   # the bridge, tests and benchmark notes cite them


def test_no_citation_of_notes_outside_the_repository():
    offenders = [f"{f.relative_to(REPO)}:{n}" for f in _tracked_text_files()
                 for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if OUTSIDE.search(line) and f.name != Path(__file__).name]
    assert not offenders, "cite docs/maintainers/ instead of notes outside the repository: " + ", ".join(offenders)


def test_repository_paths_named_in_the_maintainer_docs_exist():
    missing = []
    for doc in sorted((REPO / "docs" / "maintainers").glob("*.md")):
        for m in re.finditer(r"`((?:doodl_nodes|tests|benchmarks|docs)/[\w./-]+\.(?:py|md))`", doc.read_text(encoding="utf-8")):
            if not (REPO / m.group(1)).is_file():
                missing.append(f"{doc.name}: {m.group(1)}")
    assert not missing, missing
