"""The README and docs/: the README stays short, every link and anchor resolves, every module path named exists,
the architecture page names every module, and the docs speak of the project, not of its history.

Reads only the repository (no network, no model)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README] + sorted(DOCS.glob("*.md"))
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)   # http:, https:, mailto: ...


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where links and headings are not markdown."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link counts by its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    """Every anchor a page has, duplicates numbered as GitHub numbers them (`x`, `x-1`, `x-2`)."""
    seen: dict = {}
    out = set()
    for match in HEADING.finditer(FENCE.sub("", _text(path))):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links() -> list:
    """(page, target) for every relative link and image in the README and docs/*.md."""
    found = []
    for page in PAGES:
        for match in LINK.finditer(_prose(_text(page))):
            target = match.group(1)
            if not EXTERNAL.match(target):
                found.append((page, target))
    return found


def test_the_slug_rule_is_githubs():
    assert slug("Picking the right copy") == "picking-the-right-copy"
    assert slug("The `.pt` file (the webui's layout)") == "the-pt-file-the-webuis-layout"
    assert slug("Half precision and FP8") == "half-precision-and-fp8"
    assert slug("X/Y/Z plot") == "xyz-plot"
    assert slug("run_folder and *more*") == "run_folder-and-more"


def test_the_readme_is_short():
    lines = _text(README).splitlines()
    assert 0 < len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_the_readme_links_every_docs_page():
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    linked = {(README.parent / target.split("#")[0]).resolve() for page, target in links() if page == README}
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page named {missing}"


def test_every_relative_link_and_anchor_resolves():
    found = links()
    assert len(found) > 20, found
    wrong = []
    for page, target in found:
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}: ({target})"
        if not dest.exists():
            wrong.append(f"{where}: {path_part} does not exist")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            wrong.append(f"{where}: no heading '{anchor}' in {dest.relative_to(ROOT)}")
    assert not wrong, "\n".join(wrong)


def test_every_image_exists():
    images = [(page, m.group(1)) for page in PAGES for m in LINK.finditer(_prose(_text(page)))
              if m.group(0).startswith("!")]
    assert len(images) >= 3, images
    missing = [f"{page.relative_to(ROOT)}: {target}" for page, target in images
               if not (page.parent / target).is_file()]
    assert not missing, missing


# A path the docs name: hypernet/x.py, hypernet/dir/, hypernet/dir/x.py (not /hypernet/v1/ routes, not a file
# name ending in -hypernet/); tests/, benchmarks/ and scripts/ files likewise.
MODULE_PATH = re.compile(r"(?<![\w./-])hypernet/(?:[\w.-]+/)*(?:[\w.-]+\.py)?")
OTHER_PATH = re.compile(r"(?<![\w./-])(?:tests|benchmarks|scripts)/(?:[\w.-]+/)*[\w.-]+\.py")


def _named(pattern) -> list:
    found = []
    for page in PAGES:
        for match in pattern.finditer(_text(page)):
            path = match.group(0)
            if path.endswith((".py", "/")):
                found.append((page, path))
    return found


def test_every_module_path_named_exists():
    """hypernet/... paths in the README and docs/ (code blocks included) name files and folders that exist."""
    found = _named(MODULE_PATH)
    assert len(found) > 50, found
    missing = sorted({f"{page.relative_to(ROOT)}: {path}" for page, path in found if not (ROOT / path).exists()})
    assert not missing, "\n".join(missing)


def test_every_other_source_path_named_exists():
    found = _named(OTHER_PATH)
    assert len(found) > 5, found
    missing = sorted({f"{page.relative_to(ROOT)}: {path}" for page, path in found if not (ROOT / path).exists()})
    assert not missing, "\n".join(missing)


def test_the_architecture_page_names_every_module():
    page = _text(DOCS / "architecture.md")
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "hypernet").rglob("*.py")
                     if p.name != "__init__.py" or p.parent == ROOT / "hypernet")
    assert len(modules) > 40, modules
    missing = [m for m in modules if not re.search(rf"(?<![\w./-]){re.escape(m)}(?![\w/])", page)]
    assert not missing, f"docs/architecture.md has no line for {missing}"


ISSUE = [
    re.compile(r"\b(?:issue|pull request|PR)s?\s*(?:no\.?\s*)?#?\s*\d+", re.I),   # "issue 13", "PR #4"
    re.compile(r"(?<![\w&/])#\d+\b"),                                              # "#13", outside code
]
HISTORY = re.compile(r"\b(?:previous|earlier|last|old) (?:release|version)s?\b|\bno longer\b|\bused to\b"
                     r"|\bold default\b|\bthis change\b|\bformerly\b|\bthe issue's\b", re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_docs_cite_no_issue_and_tell_no_history(page):
    prose = _prose(_text(page))
    assert prose.strip()
    wrong = [m.group(0) for pattern in ISSUE for m in pattern.finditer(prose)]
    wrong += [m.group(0) for m in HISTORY.finditer(prose)]
    assert not wrong, f"{page.relative_to(ROOT)}: {wrong}"


def test_the_history_check_finds_history():
    sample = "As issue 13 showed (#14), the previous release's demo no longer ... PR #2; see `#3` in code"
    prose = _prose(sample)
    hits = [m.group(0) for pattern in ISSUE for m in pattern.finditer(prose)] + HISTORY.findall(prose)
    assert set(hits) == {"issue 13", "PR #2", "#14", "#2", "previous release", "no longer"}  # not `#3`


def test_the_training_page_run_file_is_a_valid_run_file(tmp_path):
    """The run file and the preview prompts file docs/training.md shows are read as the CLI reads them."""
    from hypernet.apps.cli import _train_keys
    from hypernet.config import TrainOptions
    from hypernet.train.config_file import read_config
    from hypernet.train.sample_prompts import parse_line
    page = _text(DOCS / "training.md")
    block = re.search(r"```toml\n(.*?)```", page, re.S).group(1)
    (tmp_path / "run.toml").write_text(block)
    values = read_config(tmp_path / "run.toml", _train_keys())
    TrainOptions(**{k: v for k, v in values.items() if k in TrainOptions.__dataclass_fields__})
    assert values["clip_skip"] == 2 and values["optimizer"] == "Lion"
    lines = re.search(r"```text\n(.*?)```", page, re.S).group(1).splitlines()
    assert [p.prompt for p in map(parse_line, lines) if p] == ["a castle on a hill, mystyle",
                                                              "a portrait of a woman, mystyle"]


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", _text(ROOT / "README.md"), re.S)
    tests = [b for b in blocks if "pytest" in b]
    assert len(tests) == 1 and "ruff check" in tests[0] and "mypy" in tests[0]
    assert tests[0].strip() in _text(ROOT / ".ci" / "run").splitlines()
