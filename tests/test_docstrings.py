"""The docstrings are written in the style the API reference renders (docs/contributing.md):
Google sections, Markdown text, cross-references as mkdocstrings autorefs and maths for
arithmatex. Read statically with griffe, as mkdocstrings reads them, so no extra is imported."""

import re
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]

# What mkdocstrings' Google parser would show as raw text.
SPHINX = {
    "a Sphinx role (write [`Name`][] or [`Name`][dqs_torchrl.Name])": re.compile(
        r":(class|func|meth|mod|attr|data|obj|exc|math|ref|py:\w+):`"
    ),
    "a reST directive (maths: $$ ... $$ on lines of their own)": re.compile(
        r"^\s*\.\. [\w:-]+::", re.M
    ),
    "a reST literal block (use a fenced code block)": re.compile(r"::$", re.M),
    "a reST inline literal (Markdown code is `one backtick`)": re.compile(r"(?<!`)``(?!`)"),
}
# A cross-reference, or a code span (whose brackets are Python, not links), left to right.
CROSSREF_OR_CODE = re.compile(r"\[([^\[\]]+)\]\[([^\[\]]*)\]|`[^`]*`")
DOCTEST = re.compile(r"^\s*(>>>|\.\.\.).*$", re.M)


def documented_objects():
    """Every module, class, function and attribute of the package, imported names left out."""
    package = griffe.load("dqs_torchrl", search_paths=[str(ROOT)], resolve_aliases=False)
    todo = [package]
    while todo:
        obj = todo.pop()
        yield obj
        todo.extend(member for member in obj.members.values() if not member.is_alias)


def expand(obj, identifier: str) -> str:
    """The identifier autorefs looks up, as mkdocstrings-python's ``scoped_crossrefs`` expands
    it: the first name is resolved from where the docstring is, the rest appended."""
    first, _, rest = identifier.partition(".")
    try:
        first = obj.resolve(first)
    except Exception:  # not a name in scope: an absolute path such as dqs_torchrl.X
        pass
    return f"{first}.{rest}" if rest else first


OBJECTS = [obj for obj in documented_objects() if obj.docstring is not None]


def test_the_walk_reads_the_package():
    paths = {obj.path for obj in OBJECTS}
    assert {"dqs_torchrl.actor.DiffusionActor", "dqs_torchrl.schedules"} <= paths
    assert "dqs_torchrl.experiments.maze.make_maze_env" in paths


@pytest.mark.parametrize("what", list(SPHINX))
def test_no_sphinx_markup(what):
    pattern = SPHINX[what]
    found = [
        f"{obj.path}: {match.group(0)!r}"
        for obj in OBJECTS
        for match in pattern.finditer(obj.docstring.value)
    ]
    assert not found, f"{what} in:\n" + "\n".join(found)


def test_crossrefs_resolve():
    collection = OBJECTS[0].modules_collection
    broken = []
    for obj in OBJECTS:
        text = DOCTEST.sub("", obj.docstring.value)
        for match in CROSSREF_OR_CODE.finditer(text):
            title, identifier = match.groups()
            if title is None:
                continue
            target = expand(obj, identifier or title.strip("`"))
            try:
                collection[target]
            except (KeyError, griffe.AliasResolutionError):
                broken.append(f"{obj.path}: [{title}][{identifier}] -> {target}")
    assert not broken, "cross-references to nothing:\n" + "\n".join(broken)
