"""The README's code snippets are the example DAGs' [START]/[END] regions, word for word."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKED = re.compile(r"# \[START (?P<name>\w+)\]\n(?P<body>.*?)\n\s*# \[END (?P=name)\]", re.S)
REGIONS = [
    pytest.param(textwrap.dedent(match["body"]), id=match["name"])
    for path in sorted((ROOT / "dags_examples").glob("*.py"))
    for match in MARKED.finditer(path.read_text())
]


def test_every_example_dag_has_marked_regions() -> None:
    assert len(REGIONS) >= 4


def _without_blank_lines(text: str) -> str:
    # ruff formats the README's code blocks too, adding top-level blank lines the DAG file lacks.
    return "\n".join(line for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("snippet", REGIONS)
def test_readme_quotes_the_example_dag_region(snippet: str) -> None:
    assert _without_blank_lines(snippet) in _without_blank_lines((ROOT / "README.md").read_text())


def test_changelog_names_the_current_version() -> None:
    from airflow_provider_cfai import __version__

    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()
