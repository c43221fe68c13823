"""The README and docs/: every relative link resolves, the first screen holds the two commands, and the
README's headline figures are the ones docs/measured.md holds with their commands."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link inside one is not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks, colons, slashes,
    parentheses) removed, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), flags=re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: {file.name} has no heading with the anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [code](x.py)\n\n```\n[not a link](nowhere.md)\n```\n")
    assert relative_links(page) == ["#top", "missing.md", "x.py"]
    assert anchors(page) == {"top"} and slug("Export: `sendwise privacy export CUSTOMER_ID`") == \
        "export-sendwise-privacy-export-customer_id"


def test_the_first_screen_holds_the_demo_and_the_test_command() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:30])
    blocks = re.findall(r"```bash\n(.*?)```", first_screen, flags=re.DOTALL)
    assert any(b.strip().endswith("sendwise demo") and "pip install -e ." in b for b in blocks), blocks
    assert any(b.strip() == "bash .ci/run" for b in blocks), blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test,spark]"' in ci and "openjdk-17-jre-headless" in ci and "redis-server" in ci
    last = ci.rstrip().splitlines()[-1]
    assert last.startswith(".venv/bin/python -m pytest "), "the README's test command runs the tests last"
    assert "--dist loadfile" in last  # a file's tests on one worker: its module fixtures are built once


def headline_rows() -> list[list[str]]:
    section = README.read_text().split("\n## Measured\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if len(r) == 3]


def test_every_headline_figure_is_in_the_measured_docs_with_its_command() -> None:
    """A figure changed in docs/measured.md (or docs/known-gaps.md) and not in the README, or the
    other way round, fails here."""
    measured = (ROOT / "docs" / "measured.md").read_text() + (ROOT / "docs" / "known-gaps.md").read_text()
    rows = headline_rows()
    assert len(rows) >= 5
    for what, figure, command in rows:
        figure = re.sub(r"\]\([^)]*\)", "]", figure)  # numbers in link targets are not figures
        for number in re.findall(r"\d[\d,.]*\d|\d", figure):
            assert re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d,]|\.\d)", measured), (what, number)
        program = re.match(r"`(?:(python benchmarks/\S+)|sendwise (\S+ \S+))", command)
        assert program and (program[1] or program[2]) in measured, (what, command)
