"""The user docs (README.md, docs/**/*.md) are true: links resolve inside the repository,
every pipeline and headwater.yaml snippet validates, and every command shown parses.

Snippets are labelled by their first line (``# headwater.yaml``, ``# pipelines/x.yaml``) or
recognised by their keys (``steps:`` makes a pipeline, only project keys a headwater.yaml);
other YAML (CI files, test case files) is left alone. The snippets of a page under docs/
also form a project that ``headwater check`` must accept, so a pipeline naming a connection
the page never declares fails here (README.md shows fragments of several projects).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import typer.main
import yaml

from headwater.cli.main import app, take_env_option
from headwater.config.schema import render

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<(https?://[^>\s]+)>")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROJECT_KEYS = set(json.loads(render("project"))["properties"])


@functools.cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    """One checked validator per schema (``jsonschema.validate`` re-checks it per call)."""
    return jsonschema.Draft202012Validator(json.loads(render(kind)))


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def _prose(text: str) -> str:
    """The page without fenced blocks and inline code (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _blocks(page: Path, *languages: str) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) in languages]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_resolve_inside_the_repository(page: Path) -> None:
    """Relative links point at files (and headings) that exist in the repository; the
    only absolute URLs allowed are loopback ones."""
    for match in LINK.finditer(_prose(page.read_text(encoding="utf-8"))):
        target = match.group(1) or match.group(2)
        url = urlparse(target)
        if url.scheme:
            assert url.scheme in ("http", "https") and url.hostname in LOOPBACK, (
                f"{_rel(page)}: {target} leaves the repository")
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(REPO), f"{_rel(page)}: {target} leaves the repository"
        assert resolved.exists(), f"{_rel(page)}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{_rel(page)}: no heading #{anchor}"


def _kind(snippet: str, doc: Any) -> str | None:
    first = snippet.lstrip().splitlines()[0] if snippet.strip() else ""
    if first.strip() == "# headwater.yaml":
        return "project"
    if re.fullmatch(r"#\s*pipelines/[\w\-]+\.ya?ml\s*", first) or (
            isinstance(doc, dict) and "steps" in doc):
        return "pipeline"
    if isinstance(doc, dict) and doc and set(doc) <= PROJECT_KEYS:
        return "project"  # all of headwater.yaml, or the part a paragraph is about
    return None


def _snippets(page: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for snippet in _blocks(page, "yaml", "yml"):
        doc = yaml.safe_load(snippet)
        kind = _kind(snippet, doc)
        if kind is not None:
            assert isinstance(doc, dict), f"{_rel(page)}: a {kind} snippet must be a mapping"
            out.append((kind, doc))
    return out


PAGES_WITH_SNIPPETS = [p for p in PAGES if _snippets(p)]


def test_the_howtos_and_devops_page_have_snippets() -> None:
    """Every how-to and the DevOps page show at least one pipeline or settings file."""
    expected = {*(REPO / "docs" / "howto").glob("*.md"), REPO / "docs" / "devops.md"}
    assert len(expected) >= 13
    assert expected <= set(PAGES_WITH_SNIPPETS)


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=_rel)
def test_yaml_snippets_validate_and_check(page: Path, tmp_path: Path) -> None:
    """Each pipeline / headwater.yaml snippet validates against the JSON Schema, and the
    page's snippets together are a project 'headwater check' accepts."""
    from headwater.project import Project

    settings: dict[str, Any] = {"name": "docs"}
    for kind, doc in _snippets(page):
        if kind == "project":
            doc = {"name": "docs", **doc}
        try:
            _validator(kind).validate(doc)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{_rel(page)}: {kind} snippet: {exc.message} at "
                        f"{list(exc.absolute_path)}")
        if kind == "project":
            connections = {**settings.get("connections", {}), **doc.get("connections", {})}
            settings = {**settings, **doc, "connections": connections}
        else:
            target = tmp_path / "pipelines" / f"{doc['name']}.yaml"
            target.parent.mkdir(exist_ok=True)
            target.write_text(yaml.safe_dump(doc), encoding="utf-8")
    if page == REPO / "README.md":
        return
    (tmp_path / "headwater.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    with Project(tmp_path) as project:
        problems = [p for p in project.check() if p.get("level") != "warning"]
    assert not problems, f"{_rel(page)}: headwater check: {problems}"


def _command_lines(page: Path) -> list[str]:
    lines = []
    for block in _blocks(page, "console", "bash", "sh", "shell"):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("headwater "):
                lines.append(line)
    return lines


def _parse(argv: list[str]) -> Any:
    """Resolve and parse ``argv`` exactly as the CLI would, without running the command.

    Typer vendors its own click (no ``click.Group``), so groups are known by their
    ``resolve_command``; any parse error is the command line's fault.
    """
    command: Any = typer.main.get_command(app)
    name, parent = "headwater", None
    args = take_env_option(argv, {})
    while True:
        ctx = command.make_context(name, list(args), parent=parent)
        if not hasattr(command, "resolve_command"):
            return command
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])),
                *ctx.args]
        if not rest:
            return command  # a group that runs by itself ('headwater triggers')
        resolved, sub, args = command.resolve_command(ctx, rest)
        assert resolved is not None and sub is not None
        name, command, parent = resolved, sub, ctx


COMMAND_PAGES = [p for p in PAGES if _command_lines(p)]


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=_rel)
def test_commands_shown_are_known_commands(page: Path) -> None:
    """Every 'headwater ...' line in a console/bash block names a real command with
    options and arguments it accepts (shell redirections and '|| ...' are cut off)."""
    for line in _command_lines(page):
        words = shlex.split(line, comments=True)
        for stop in ("||", "|", "&&", ">", ";"):
            if stop in words:
                words = words[:words.index(stop)]
        try:
            parsed = _parse(words[1:])
        except Exception as exc:  # noqa: BLE001 - the vendored click's errors
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            pytest.fail(f"{_rel(page)}: {line!r}: {message}")
        assert parsed.callback is not None, f"{line}: not a command that runs"


def test_devops_page_shows_the_ci_commands() -> None:
    """The DevOps page shows what a team runs: test, plan, deploy, init --ci."""
    lines = _command_lines(REPO / "docs" / "devops.md")
    for needle in ("headwater test", "headwater plan --env qa", "headwater deploy --env qa",
                   "headwater init --ci github", "headwater check --env prod"):
        assert any(line.startswith(needle) for line in lines), needle
