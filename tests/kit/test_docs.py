"""The author docs stay complete: every capability, clause, hook, description field and check option
the code has is documented, hooks with the kind the core enforces."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from exo_gpu_plugins.backend import HOOK_KINDS
from exo_gpu_plugins.cli import build_parser
from exo_gpu_plugins.models import Capabilities, DeviceDescription
from exo_gpu_plugins.testing import CLAUSES

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTRACT = (DOCS / "contract.md").read_text(encoding="utf-8")
GUIDE = (DOCS / "writing-a-backend.md").read_text(encoding="utf-8")


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of each body row of the first table after `heading`."""
    section = text[text.index(heading) :]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def names_in(cell: str) -> list[str]:
    """The identifiers quoted in a cell: `_free(native)` -> _free."""
    return [re.match(r"\w+", quoted).group(0) for quoted in re.findall(r"`([^`]+)`", cell)]  # type: ignore[union-attr]


def test_every_capability_is_in_the_contract_table() -> None:
    documented = {name for row in table_rows(CONTRACT, "## Capabilities") for name in names_in(row[0])}
    assert set(Capabilities.model_fields) == documented


def test_every_clause_is_in_the_contract_table() -> None:
    documented = [row[0] for row in table_rows(CONTRACT, "## The conformance kit's clauses")]
    assert documented == list(CLAUSES)


def test_every_hook_is_in_the_guide_with_its_kind() -> None:
    kinds: dict[str, str] = {}
    for row in table_rows(GUIDE, "### Hooks: which kind, when they run"):
        for name in names_in(row[0]):
            kinds[name] = row[1]
    assert set(kinds) == set(HOOK_KINDS)
    wrong = {
        hook: kinds[hook]
        for hook, is_async in HOOK_KINDS.items()
        if kinds[hook] != ("async" if is_async else "sync")
    }
    assert not wrong, wrong


def test_every_description_field_is_in_the_guide() -> None:
    documented = {
        name
        for row in table_rows(GUIDE, "### What you fill: `DeviceDescription`")
        for name in names_in(row[0])
    }
    assert set(DeviceDescription.model_fields) == documented


def _check_options() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    check = commands.choices["check"]
    return {option for action in check._actions for option in action.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("option", sorted(_check_options()))
def test_every_check_option_is_in_the_guide(option: str) -> None:
    assert f"`{option}" in GUIDE, f"exo-gpu check {option} is not documented in writing-a-backend.md"


def test_the_guide_shows_the_example_backend_as_it_is() -> None:
    """The guide's copy of the example backend is the file itself, not a version of it."""
    example = DOCS.parent / "examples" / "minimal_plugin" / "exo_gpu_example" / "backend.py"
    section = GUIDE[GUIDE.index("### The whole example backend") :]
    start = section.index("```python\n") + len("```python\n")
    shown = section[start : section.index("```\n", start)]
    assert shown == example.read_text(encoding="utf-8"), (
        f"the code under 'The whole example backend' in writing-a-backend.md differs from {example}"
    )
