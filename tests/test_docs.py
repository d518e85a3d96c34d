"""The documentation stays true to the code: docs/cli.md is what scripts/cli_reference.py makes of
the click commands, every relative link in README.md and docs/ resolves (file and heading), and
the README stays a short user document."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cli_reference.py"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200
MAX_LINE = 400  # characters of one README line (a table row included)
MAX_CELL = 120  # characters of one README table cell

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str, code_spans: bool = False) -> str:
    """``text`` without its fenced code blocks and (unless ``code_spans``) its inline code spans:
    a link written there is not a link."""
    kept, inside = [], False
    for line in text.split("\n"):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            kept.append(line if code_spans else re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    result = set()
    for line in prose(page.read_text(encoding="utf-8"), code_spans=True).split("\n"):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = found.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        found[base] = count + 1
    return result


def test_cli_reference_is_current(capsys):
    """`python scripts/cli_reference.py --check`, as CI runs it: docs/cli.md equals the commands."""
    pytest.importorskip("torch")  # the quantization commands import it; the CI install has it
    assert cli_reference().main(["--check"]) == 0, capsys.readouterr().err


def test_cli_reference_check_fails_in_one_line_when_stale(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    module = cli_reference()
    stale = tmp_path / "cli.md"
    stale.write_text("# stale\n", encoding="utf-8")
    monkeypatch.setattr(module, "OUTPUT", stale)
    assert module.main(["--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "python scripts/cli_reference.py" in err
    assert stale.read_text(encoding="utf-8") == "# stale\n"  # --check writes nothing


def test_cli_reference_names_every_command_and_option():
    pytest.importorskip("torch")
    import click

    from qfsdk.cli import COMMANDS, main

    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    ctx = click.Context(main, info_name="qfsdk")
    for name in COMMANDS:
        assert f"## qfsdk {name}\n" in text, name
        for param in main.get_command(ctx, name).params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"`{', '.join(param.opts)}" in text, (name, param.opts)


def test_cli_reference_has_no_machine_specific_text():
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for place in {str(REPO), str(Path.home()), sys.prefix}:
        assert place not in text, place


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, broken


def test_readme_is_a_short_user_document():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert len(lines) < README_MAX_LINES, len(lines)
    longest = max(lines, key=len)
    assert len(longest) < MAX_LINE, longest
    cells = [cell.strip() for line in lines if line.startswith("|") for cell in line.strip("|").split(" | ")]
    too_long = [cell for cell in cells if len(cell) > MAX_CELL]
    assert not too_long, too_long
    assert not re.search(r"\bissue'?s?\b|\bsession\b|^## Status", text, re.IGNORECASE | re.MULTILINE)


def test_docs_do_not_speak_of_issues_or_sessions():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"the issue'?s?\b|this session", text, re.IGNORECASE), page.name
