"""The documentation keeps its promises: a short README, links that resolve, a command beside
every figure, figures that regenerate from their data, and a tree the architecture page names."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)")
COMMAND = re.compile(r"^\s{4,}(EDGE_\S+=\S+ )?(edge|python|\./run) ", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


def test_the_readme_is_read_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    for must in ("./run demo", "./tests/run", "Not a liveness check", "Raspberry Pi or Jetson", "Skin tone and age"):
        assert must in text, must


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_every_page_of_the_docs_index_exists_and_every_page_is_listed() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    listed = set(re.findall(r"\]\(([a-z]+\.md)\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages == listed


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_figure_has_its_command_beside_it(page: Path) -> None:
    text = page.read_text()
    for m in FIGURE.finditer(text):
        before = text[max(0, m.start() - 1500) : m.start()]
        after = text[m.end() : m.end() + 600]
        assert COMMAND.search(before) or COMMAND.search(after) or "--plot" in before + after, (
            f"{page.name}: {m.group(1)} has no command beside it"
        )
        assert (page.parent / m.group(1)).is_file(), f"{page.name}: {m.group(1)} is not committed"


def test_every_figure_regenerates_from_its_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "figures" / "make.py")
    assert spec and spec.loader
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    made = {p.name for p in make.main(tmp_path)}
    embedded = {Path(f).name for page in PAGES for f in FIGURE.findall(page.read_text())}
    assert embedded, "no figure embedded in the docs"
    assert embedded <= made, f"figures not made by docs/figures/make.py: {sorted(embedded - made)}"
    for name in made:
        assert (tmp_path / name).stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_the_architecture_page_names_every_module_where_it_lives() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    tree = page[page.index("edge/\n") :]
    missing = []
    for module in sorted((ROOT / "edge").rglob("*.py")):
        rel = module.relative_to(ROOT / "edge")
        if module.name in ("__init__.py", "__main__.py"):
            continue
        package = rel.parts[0] if len(rel.parts) > 1 else ""
        section = tree
        if package:
            start = tree.find(f"\n  {package}/")
            assert start >= 0, f"docs/architecture.md has no {package}/"
            nxt = re.search(r"\n  [a-z]+/", tree[start + 3 :])
            end = start + 3 + nxt.start() if nxt else len(tree)
            section = tree[start:end]
        if module.stem not in section and package != "cli":
            missing.append(str(rel))
    lab = tree[tree.index("\nedge_lab/") :]
    missing += [
        f"edge_lab/{m.name}"
        for m in sorted((ROOT / "edge_lab").glob("*.py"))
        if m.name != "__init__.py" and m.stem not in lab
    ]
    assert not missing, f"modules docs/architecture.md does not place: {missing}"
