"""Every relative link and image path in README.md and docs/**/*.md resolves, and every #anchor names a heading.

Rules (GitHub's rendering): a relative target is resolved against the markdown file's folder (a leading ``/``
against the repository root) and must exist; ``#anchor`` (same file) or ``file.md#anchor`` must equal the slug of
a heading of the target (lowercase, spaces to ``-``, punctuation other than ``-`` and ``_`` dropped, a repeated
heading gets ``-1``, ``-2``, ...) or an explicit ``id=`` / ``name=`` of an HTML tag there. External links (any
``scheme:``) are not fetched. Links inside fenced code blocks and inline code spans are not links.
"""

import os
import re
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be <...> and may carry a "title"
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets
    r"\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (target, which may hold balanced parentheses
    r"(?:\s+[\"'(].*?)?\s*\)"  # an optional "title")
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_TARGET = re.compile(r"<(?:a|img|source)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
_HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root=ROOT):
    """README.md and every .md file under docs/, sorted."""
    files = [os.path.join(root, "README.md")]
    for folder, _, names in os.walk(os.path.join(root, "docs")):
        files += [os.path.join(folder, n) for n in names if n.endswith(".md")]
    return sorted(f for f in files if os.path.isfile(f))


def _prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        yield number, line


def github_slug(heading):
    """GitHub's anchor of a heading's markdown text."""
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("*", "")  # emphasis
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and "_" (Unicode letters too)
    return text.replace(" ", "-")


def anchors(text):
    """Every anchor a markdown text defines: its headings' slugs (repeats numbered) and HTML ids / names."""
    found, seen = set(), {}
    previous = None
    for _, line in _prose_lines(text):
        heading = None
        match = _ATX_HEADING.match(line)
        if match:
            heading = match.group(2)
        elif previous and previous.strip() and _SETEXT_UNDERLINE.match(line) and not previous.lstrip().startswith("|"):
            heading = previous.strip()
        if heading is not None:
            slug = github_slug(heading)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(_HTML_ANCHOR.findall(line))
        previous = line
    return found


def links(text):
    """(line number, target) of every link, image and reference definition outside code."""
    for number, line in _prose_lines(text):
        line = _INLINE_CODE.sub("", line)
        targets = _INLINE_LINK.findall(line) + _REFERENCE_DEF.findall(line) + _HTML_TARGET.findall(line)
        for target in targets:
            target = target.strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1].strip()
            yield number, target


def check_file(path, root=ROOT):
    """Problems of one markdown file: ``"file:line: target: what is wrong"`` strings."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems, cache = [], {}
    where = os.path.relpath(path, root)
    for number, target in links(text):
        if not target or _SCHEME.match(target):
            continue  # external (http, https, mailto, ...): not fetched
        file_part, _, anchor = target.partition("#")
        file_part = urllib.parse.unquote(file_part)
        if file_part:
            base = root if file_part.startswith("/") else os.path.dirname(path)
            resolved = os.path.normpath(os.path.join(base, file_part.lstrip("/")))
            if not os.path.exists(resolved):
                problems.append(f"{where}:{number}: {target}: {os.path.relpath(resolved, root)} does not exist")
                continue
        else:
            resolved = path
        if not anchor or not resolved.endswith(".md") or not os.path.isfile(resolved):
            continue  # no anchor, or an anchor into a file that is not markdown (e.g. a line of code)
        if resolved not in cache:
            with open(resolved, encoding="utf-8") as f:
                cache[resolved] = anchors(f.read())
        if urllib.parse.unquote(anchor).lower() not in cache[resolved]:
            problems.append(f"{where}:{number}: {target}: no heading #{anchor} in {os.path.relpath(resolved, root)}")
    return problems


def test_docs_links_resolve():
    files = markdown_files()
    assert os.path.join(ROOT, "README.md") in files and len(files) > 1
    problems = [p for f in files for p in check_file(f)]
    assert not problems, "broken links in the docs:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("Use ltdet2 in your own Detectron2 project", "use-ltdet2-in-your-own-detectron2-project"),
        ("LOCE (`projects/loce.py`)", "loce-projectslocepy"),
        ("When a gap is a result", "when-a-gap-is-a-result"),
        ("Phases, `--phase` and resume", "phases---phase-and-resume"),
        ("CPU-only torch", "cpu-only-torch"),
        ("**GPU figures** (H200)", "gpu-figures-h200"),
        ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "img.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n\n## A section\n\nSetext\n------\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page title\n\n"
        "[good file](other.md) [good anchor](other.md#a-section) [repeat](other.md#a-section-1)\n"
        "[setext](other.md#setext) [same file](#page-title) ![image](img.png) [root](/docs/other.md)\n"
        "[external](https://example.com/missing.md#nowhere) <img src='img.png'>\n"
        "`[in code](missing_in_code.md)`\n\n"
        "```\n[in a fence](missing_in_fence.md)\n```\n\n"
        "[broken file](missing.md)\n"
        "[broken anchor](other.md#no-such-section)\n"
        "[broken same-file anchor](#nope) ![broken image](images/none.png)\n"
        "[ref]: ../nowhere.md\n"
    )
    problems = check_file(str(page), root=str(tmp_path))
    assert len(problems) == 5, problems
    expected = ["missing.md", "#no-such-section", "#nope", "images/none.png", "../nowhere.md"]
    for problem, target in zip(problems, expected):
        assert target in problem
    assert problems[0].startswith(os.path.join("docs", "page.md") + ":12: ")
