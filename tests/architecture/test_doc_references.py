"""Every reference in a comment or a document points inside the repository.

A reader of the repository must be able to follow each citation. So the source and doc files
that git knows of (tracked, or new and not ignored) may not mention the research notes that
were kept outside the repository (the design, method, service-bar, library-survey and
conventions notes: ``FOREIGN`` spells their file names), and every ``docs/….md`` path they cite
has to exist. Where a citation names a section (``docs/method.md, "GIF"``) or an anchor
(``docs/method.md#gif``), the section or anchor has to exist too, and the relative links of the
Markdown files have to resolve.
"""

from __future__ import annotations

import bisect
import re
import subprocess
import unicodedata
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: File kinds that hold comments or prose: source, docs, configuration, scripts.
SUFFIXES = {".py", ".md", ".conf", ".yml", ".yaml", ".toml", ".cfg", ".ini", ".sh", ".txt", ".example"}

#: The notes that live outside the repository, by file name (not preceded by a letter, digit or
#: hyphen, so that e.g. ``service-design.md`` is not mistaken for one of them).
FOREIGN = re.compile(r"(?<![\w-])(?:design|gif-method|service-bar|influence-libraries|conventions)\.md\b")
#: A repository doc cited by path: ``docs/method.md``, optionally ``#anchor`` (not part of a
#: longer path or URL such as ``other/docs/notes.md``).
DOC_PATH = re.compile(r"(?<![\w./-])docs/([\w./-]+?\.md)(?:#([\w-]+))?")
#: A doc cited with a section name on the same line: ``docs/method.md, "GIF"`` (or 'GIF').
DOC_SECTION = re.compile(r"(?<![\w./-])docs/([\w./-]+?\.md),\s*(?:\"([^\"]{1,160})\"|'([^']{1,160})')")
#: What starts a continued line of prose in a comment, docstring or quote (dropped when joining).
CONTINUATION = re.compile(r"^\s*(?:#:?|//|\*|>)?\s*")
#: A Markdown link or image target: ``[text](target)``.
MD_LINK = re.compile(r"\]\(([^()\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
NUMBERING = re.compile(r"^\d+(?:\.\d+)*\.?\s+")


@cache
def scanned_files() -> tuple[Path, ...]:
    """Tracked files plus new, not ignored ones, restricted to the kinds that hold prose."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = sorted({ROOT / name for name in out.split("\0") if name})
    return tuple(p for p in paths if p.is_file() and _holds_prose(p))


def _holds_prose(path: Path) -> bool:
    name = path.name
    if path.suffix in SUFFIXES or name == "Makefile" or "Dockerfile" in name:
        return True
    if path.suffix:
        return False
    try:  # an executable script without a suffix, e.g. .ci/run
        with path.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _where(path: Path, lineno: int) -> str:
    return f"{path.relative_to(ROOT)}:{lineno}"


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """Markdown lines outside fenced code blocks (headings and links live there)."""
    out, fenced = [], False
    for lineno, line in enumerate(_lines(path), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((lineno, line))
    return out


def _slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", title).strip().lower()
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN"
    )  # letters, digits (any script), spaces, hyphens, underscores
    return kept.replace(" ", "-")


@cache
def headings(doc: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    """A Markdown file's section titles (numbering such as ``6.2`` stripped) and its anchors
    (explicit ``<a id=…>`` ones and GitHub's generated ones, duplicates numbered)."""
    titles, anchors, seen = [], set(), {}
    for _, line in _prose_lines(doc):
        anchors.update(EXPLICIT_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        title = match.group(2)
        titles.append(NUMBERING.sub("", title))
        slug = _slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return tuple(titles), frozenset(anchors)


def _section_exists(doc: Path, section: str) -> bool:
    titles, _ = headings(doc)
    wanted = section.strip().casefold()
    return any(t.casefold() == wanted or t.casefold().startswith(wanted) for t in titles)


def _check_target(doc: Path, anchor: str | None) -> str | None:
    """Why a cited doc (and anchor) cannot be followed; None if it can."""
    if not doc.exists():
        return "no such file in the repository"
    if anchor and doc.suffix == ".md" and anchor not in headings(doc)[1]:
        return f"no anchor #{anchor} in {doc.relative_to(ROOT)}"
    return None


def test_the_scan_covers_code_and_docs():
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert {"README.md", "Makefile", "pyproject.toml", "docs/service.md"} <= names
    assert any(n.endswith(".py") for n in names)
    assert any("Dockerfile" in n for n in names)


def test_no_reference_to_notes_outside_the_repository():
    found = [
        f"{_where(path, lineno)}: {line.strip()}"
        for path in scanned_files()
        for lineno, line in enumerate(_lines(path), 1)
        if FOREIGN.search(line)
    ]
    assert not found, (
        "these lines cite documents that are not in the repository; point them at docs/ "
        "(the method: docs/method.md, the service's design: docs/service-design.md):\n" + "\n".join(found)
    )


def test_cited_docs_and_anchors_exist():
    broken = []
    for path in scanned_files():
        for lineno, line in enumerate(_lines(path), 1):
            for match in DOC_PATH.finditer(line):
                doc = ROOT / "docs" / match.group(1)
                if problem := _check_target(doc, match.group(2)):
                    broken.append(f"{_where(path, lineno)}: docs/{match.group(1)}: {problem}")
    assert not broken, "cited docs that cannot be followed:\n" + "\n".join(broken)


def _joined(path: Path) -> tuple[str, list[int]]:
    """The file's lines joined by spaces, each continuation's comment or quote prefix dropped, so
    that a citation wrapped over two lines reads as one; and where each line starts in it."""
    text, starts = "", []
    for number, line in enumerate(_lines(path)):
        piece = line if number == 0 else " " + CONTINUATION.sub("", line)
        starts.append(len(text) + (number > 0))
        text += piece
    return text, starts


def test_cited_sections_exist():
    broken = []
    for path in scanned_files():
        text, starts = _joined(path)
        for match in DOC_SECTION.finditer(text):
            doc = ROOT / "docs" / match.group(1)
            section = match.group(2) or match.group(3)
            if doc.is_file() and not _section_exists(doc, section):
                lineno = bisect.bisect_right(starts, match.start())
                broken.append(f'{_where(path, lineno)}: docs/{match.group(1)} has no section "{section}"')
    assert not broken, "cited sections that do not exist (cite a heading, e.g. 'GIF'):\n" + "\n".join(broken)


def test_a_citation_wrapped_over_two_lines_is_read_whole(tmp_path: Path):
    cited, doc = tmp_path / "cited.py", "docs/benchmarks.md"  # not one literal: this file is scanned too
    cited.write_text(f'x = 1\ny = 2  # as measured ({doc}, "A second\n#: damping for the head")\n')
    text, starts = _joined(cited)
    (match,) = DOC_SECTION.finditer(text)
    assert match.group(2) == "A second damping for the head"
    assert _section_exists(ROOT / doc, match.group(2))
    assert not _section_exists(ROOT / doc, "A second damping for the tail")
    assert bisect.bisect_right(starts, match.start()) == 2


def test_markdown_links_resolve():
    broken = []
    for path in scanned_files():
        if path.suffix != ".md":
            continue
        for lineno, line in _prose_lines(path):
            for match in MD_LINK.finditer(line):
                target = match.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                    continue  # a URL (https:, mailto:, …): outside the repository by intent
                file_part, _, anchor = target.partition("#")
                doc = (path.parent / file_part).resolve() if file_part else path
                if problem := _check_target(doc, anchor or None):
                    broken.append(f"{_where(path, lineno)}: ({target}): {problem}")
    assert not broken, "Markdown links that do not resolve:\n" + "\n".join(broken)
