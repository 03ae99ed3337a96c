"""The documentation holds together: a short README that reaches every docs page, links that
resolve, a config reference in step with the dataclasses, and no pointer outside the repository
(an issue number, a notes file) in any file."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a link or heading in code is not one)."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        lines.append("" if fenced else line)
    return lines


def links(path: Path) -> list[str]:
    found = []
    for line in prose(path):
        line = re.sub(r"`[^`]*`", "", line)
        found += [a or b for a, b in LINK.findall(line)]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def pages() -> list[Path]:
    return sorted(DOCS.glob("**/*.md"))


def test_slug_matches_github_examples():
    # Anchors GitHub gives these headings (checked on rendered pages): punctuation goes, case
    # folds, each space becomes a hyphen, hyphens and underscores stay.
    assert slug("The paper's recipes and what they cost") == "the-papers-recipes-and-what-they-cost"
    assert slug("GLIDE: CLIP guidance") == "glide-clip-guidance"
    assert slug("Results, plots and MLflow") == "results-plots-and-mlflow"
    assert slug("`sweep.grids[]`") == "sweepgrids"


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes: move detail to docs/"


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached or not page.exists() or page.suffix != ".md":
            continue
        reached.add(page)
        for target in links(page):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            todo.append((page.parent / target.split("#", 1)[0]).resolve())
    missing = [str(p.relative_to(REPO)) for p in pages() if p.resolve() not in reached]
    assert not missing, f"docs pages no link from README.md leads to: {missing}"


@pytest.mark.parametrize("page", [README, *pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def repo_text_files() -> list[Path]:
    """Tracked files and new files git does not ignore: what a clone of the repository holds."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                                cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files of the repository are unknown")
    files = []
    for name in filter(None, listed):
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        head = path.read_bytes()[:8192]
        if b"\0" in head:
            continue  # binary
        files.append(path)
    return files


# An issue number (issue 12, issues #11 and #12, #12) or the notes file that lived beside the repo.
# "#" followed by digits counts only where it starts a word, so hex colours and anchors do not.
OUTSIDE = re.compile(r"\bissues?\s+#?\d+|(?<![\w#&/])#\d{1,5}\b|papers\.md|\.\./shared/|benchmarks/README",
                     re.IGNORECASE)
# A CSS value (`color: #555;`) is a colour, not an issue: a "property:" before it and a ";" or "}" after.
CSS_VALUE = re.compile(r"[\w-]+\s*:[^:;{}]*$")


def cites_outside(line: str) -> bool:
    for match in OUTSIDE.finditer(line):
        before, after = line[:match.start()], line[match.end():]
        if match.group().startswith("#") and CSS_VALUE.search(before) and re.match(r"[^;{}]*[;}]", after):
            continue
        return True
    return False


def test_what_counts_as_a_citation():
    for line in ["as issue #11 asked", "(issues #11 and #12)", "see issue 23", "fixed in #12; later", "papers.md"]:
        assert cites_outside(line), line
    for line in ["th { border: 1px solid #333; }", "color: #555;", "anchor.md#12", "x = a#3", "#1f77b4"]:
        assert not cites_outside(line), line


def test_no_file_points_outside_the_repository():
    this = Path(__file__).resolve()
    hits = []
    for path in repo_text_files():
        if path.resolve() == this:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if cites_outside(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, "cite no issue number or file outside the repository; restate the fact:\n" + "\n".join(hits)


def test_config_reference_is_in_step_with_the_dataclasses():
    """config/README.md is what the generator makes of the dataclasses now, and names every key."""
    from omegaconf import OmegaConf

    from synrep.config import Config

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.README.read_text() == module.render(), (
        "config/README.md is out of date: run python scripts/config_reference.py")
    text = module.README.read_text()

    def keys(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and key not in ("sources", "schedules", "by_method", "encoder_kwargs", "mask_mix"):
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    missing = [key for key in keys(OmegaConf.to_container(OmegaConf.structured(Config))) if f"| `{key}` |" not in text]
    assert missing == []
