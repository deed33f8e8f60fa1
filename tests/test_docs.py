"""The README's code snippets are the example DAGs' [START]/[END] regions, word for word, and they run.

The DAG snippets assume the README's "snippet preamble" (imports, ``BASE_MODEL``, a ``@dag``
function to put them in); these tests build a DAG from preamble + snippet, so a snippet that uses a
name the preamble does not define fails here.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
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
    assert _without_blank_lines(snippet) in _without_blank_lines(README)


def _block_after(marker: str, text: str = README) -> list[str]:
    """The fenced blocks that follow ``<!-- marker -->`` lines, without their fences."""
    pattern = re.compile(rf"^<!-- {re.escape(marker)} -->\n```\w*\n(.*?)\n```", re.M | re.S)
    return pattern.findall(text)


PREAMBLE_MARKER = "<!-- snippet-preamble -->"
PLACEHOLDER = "    pass  # a snippet goes here"


def _preamble_for(snippet: str) -> str:
    """The last snippet preamble above the snippet's place in the README."""
    first_line = next(line for line in snippet.splitlines() if line.strip())
    where = README.find(first_line)
    if where < 0:
        pytest.skip("not quoted in the README (test_readme_quotes_the_example_dag_region fails for it)")
    above = README[:where]
    assert PREAMBLE_MARKER in above, "a DAG snippet needs a snippet preamble above it in the README"
    return _block_after("snippet-preamble", above[above.rindex(PREAMBLE_MARKER) :])[0]


@pytest.mark.parametrize("snippet", REGIONS)
def test_readme_snippet_runs_after_its_readme_preamble(snippet: str) -> None:
    """A preamble either wraps snippets (a ``@dag`` function with the placeholder) or precedes them."""
    preamble = _preamble_for(snippet)
    wrapped = PLACEHOLDER in preamble
    source = preamble.replace(PLACEHOLDER, textwrap.indent(snippet, "    ")) if wrapped else f"{preamble}\n\n{snippet}"
    # As if saved as a DAG file next to the example DAGs (a preamble may use its folder).
    namespace: dict[str, object] = {"__name__": "readme_snippet", "__file__": str(ROOT / "dags_examples" / "x.py")}
    exec(compile(source, "README.md snippet", "exec"), namespace)  # NameError if the preamble lacks a name

    if wrapped:
        (dag_function,) = re.findall(r"^def (\w+)\(", preamble, re.M)
        dag = namespace[dag_function]()  # type: ignore[operator]
        assert dag.task_ids  # the snippet added its tasks to the DAG


def test_readme_preambles_are_what_the_example_dags_import_and_define() -> None:
    dag_files = [path.read_text().splitlines() for path in sorted((ROOT / "dags_examples").glob("*.py"))]
    preambles = _block_after("snippet-preamble")
    assert preambles
    for preamble in preambles:
        needed = [line for line in preamble.splitlines() if line.startswith(("import ", "from ", "BASE_MODEL = "))]
        assert "BASE_MODEL = " in preamble
        for line in needed:
            assert any(line in lines for lines in dag_files), f"no example DAG has {line!r}"
    base_models = {line for lines in dag_files for line in lines if line.startswith("BASE_MODEL = ")}
    assert len(base_models) == 1, "the example DAGs and the README use one BASE_MODEL"
    assert base_models.pop() in README.splitlines()


def test_readme_python_blocks_are_valid_python() -> None:
    blocks = re.findall(r"^```python\n(.*?)\n```", README, re.M | re.S)
    assert len(blocks) >= 7
    for block in blocks:
        compile(textwrap.dedent(block), "README.md", "exec")


def test_readme_documents_every_emulator_flag() -> None:
    from airflow_provider_cfai.emulator.cli import build_parser

    flags = {flag for action in build_parser()._actions for flag in action.option_strings if flag.startswith("--")}
    flags.discard("--help")
    assert "--data-dir" in flags
    undocumented = sorted(flag for flag in flags if f"`{flag}`" not in README)
    assert not undocumented, f"README's emulator flag table lacks {undocumented}"


@pytest.mark.parametrize("form", ["uri", "json"])
def test_readme_connection_examples_are_marked_export_lines(form: str) -> None:
    # The marked blocks are what the connection round-trip test reads: one export line each.
    blocks = _block_after(f"conn-example:{form}")
    assert len(blocks) == 2  # Cloudflare, then the emulator
    for block in blocks:
        assert block.startswith("export AIRFLOW_CONN_")
        assert len(block.splitlines()) == 1


def test_changelog_names_the_current_version() -> None:
    from airflow_provider_cfai import __version__

    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_readme_documents_every_emulator_runtime_setting_and_control_path() -> None:
    from airflow_provider_cfai.emulator.control import CONTROL_PREFIX, build_control_router
    from airflow_provider_cfai.emulator.settings import RUNTIME_KEYS

    undocumented = sorted(key for key in RUNTIME_KEYS if f"`{key}`" not in README)
    assert not undocumented, f"README's emulator settings table lacks {undocumented}"
    paths = {route.path for route in build_control_router(None).routes}  # type: ignore[arg-type]
    assert f"{CONTROL_PREFIX}/faults" in paths
    missing = sorted(path for path in paths if f"{path}`" not in README)
    assert not missing, f"README's emulator control table lacks {missing}"


def test_readme_connections_add_example_parses_and_gives_a_working_connection() -> None:
    import shlex

    from airflow.cli.cli_parser import get_parser
    from airflow.models.connection import Connection

    from airflow_provider_cfai.hooks._connection import read_settings

    (block,) = _block_after("connections-add")
    argv = shlex.split(block)
    assert argv[:3] == ["airflow", "connections", "add"]
    args = get_parser().parse_args(argv[1:])
    account = "0123456789abcdef0123456789abcdef"
    conn = Connection(
        conn_id=args.conn_id,
        conn_type=args.conn_type,
        login=args.conn_login.replace("<account id>", account),
        password=args.conn_password.replace("<api token>", "token"),
        extra=args.conn_extra,
    )

    settings = read_settings(conn, args.conn_id, "cloudflare_ai", {})

    assert (args.conn_id, settings.account_id, settings.max_retries) == ("cloudflare_ai_default", account, 5)
    assert settings.base_url == "https://api.cloudflare.com/client/v4"
