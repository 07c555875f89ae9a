"""docs/reference.md is generated from the models and the CLI, and committed up to date."""

from __future__ import annotations

from pathlib import Path

from headwater.cli.reference import render

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def test_reference_is_current() -> None:
    """Regenerate with ``headwater schema reference > docs/reference.md`` when this fails:
    a key or a command changed and the reference a user reads must say so."""
    assert render() == REFERENCE.read_text(encoding="utf-8")


def test_reference_names_every_command_and_key() -> None:
    """Spot checks: commands added by every part and keys of every step kind appear."""
    text = REFERENCE.read_text(encoding="utf-8")
    for needle in ("`headwater test TARGET`", "`headwater run PIPELINE`", "`headwater serve`",
                   "`headwater token create`", "### SqlSource", "### HttpSource",
                   "### StreamSource", "### PublishConfig", "### EnvironmentConfig",
                   "`--env NAME`"):
        assert needle in text
