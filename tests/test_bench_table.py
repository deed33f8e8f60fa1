"""The benchmark table's ratios and verdicts can be checked from the figures the table prints.

No benchmark runs here: the table formatter (``benchmarks/table.py``) gets known figures.
"""

from __future__ import annotations

import importlib.util
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

TABLE_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "table.py"


def _load_table() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("benchmarks_table", TABLE_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


table = _load_table()
Figure, Row, render_table = table.Figure, table.Row, table.render_table


def _cells(rendered: str, figure: str) -> dict[str, str]:
    """The rendered row whose figure column is ``figure``, keyed by the table's header."""
    lines = rendered.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == figure:
            return dict(zip(header, cells, strict=True))
    raise AssertionError(f"no row {figure!r} in:\n{rendered}")


def _number(cell: str) -> Decimal:
    """The leading number of a cell such as ``1.09 ms``, ``curl -F: 0.673 s`` or ``1.21x``."""
    text = cell.rsplit(": ", 1)[-1].split(" ")[0].rstrip("x")
    return Decimal(text)


def _round_like(value: Decimal, shown: str) -> Decimal:
    """``value`` rounded to as many decimals as the printed ``shown`` number has."""
    exponent = Decimal(shown.rsplit(": ", 1)[-1].split(" ")[0].rstrip("x")).as_tuple().exponent
    assert isinstance(exponent, int)
    return value.quantize(Decimal(1).scaleb(exponent))


# The two examples (figures as a benchmark measured them) and a few other magnitudes.
CASES = [
    pytest.param(Figure.ms(0.001094), Figure.ms(0.000904), 1.113, "1.21x", id="issue-1.09ms-vs-0.90ms"),
    pytest.param(Figure.seconds(0.9881), Figure.seconds(0.6731), 0.996, "1.47x", id="issue-0.988s-vs-0.673s"),
    pytest.param(Figure(1.641, "ms"), Figure(142.14, "ms"), None, "0.0115x", id="small-ratio"),
    pytest.param(Figure.seconds(4.123), Figure.seconds(4.0), None, "1.03x", id="round-anchor"),
    pytest.param(Figure.ms(0.00218), Figure.ms(0.00109), 1.9, "2.00x", id="exact-double"),
    # Unrounded, 2.3449 / 0.9951 = 2.356 (2.36); the printed 2.34 / 0.995 = 2.352 (2.35).
    pytest.param(Figure.seconds(2.3449), Figure.seconds(0.9951), None, "2.35x", id="printed-not-unrounded"),
]


@pytest.mark.parametrize(("ours", "anchor", "paired", "expected"), CASES)
def test_shown_ratio_is_the_quotient_of_the_shown_figures(
    ours: object, anchor: object, paired: float | None, expected: str
) -> None:
    row = Row("2", "hook vs anchor", ours, anchor=anchor, anchor_name="anchor", paired=paired)
    cells = _cells(render_table([row]), "hook vs anchor")
    ratio_cell = cells[table.RATIO_HEADER]

    quotient = _number(cells["ours (median)"]) / _number(cells["anchor (same run)"])
    assert _round_like(quotient, ratio_cell) == _number(ratio_cell)
    assert ratio_cell == expected


def test_paired_median_has_its_own_labelled_column_and_is_not_the_ratio() -> None:
    row = Row("3", "upload", Figure.seconds(0.988), anchor=Figure.seconds(0.673), anchor_name="curl -F", paired=0.996)
    rendered = render_table([row])
    cells = _cells(rendered, "upload")

    assert cells["median of paired per-round ratios"] == "0.996x"
    assert cells[table.RATIO_HEADER] == "1.47x"
    assert "median of paired per-round ratios" in rendered.splitlines()[0]


def test_table_notes_say_which_ratio_the_targets_judge() -> None:
    notes = render_table([]).split("\n\n", 1)[1]
    assert "`ratio ≤ Nx` are judged on that ratio as printed" in notes
    assert "never judged" in notes


@pytest.mark.parametrize(
    ("ours", "anchor", "max_ratio", "mark"),
    [
        # 1.09 / 0.904 = 1.21: over 1.15 although the paired per-round median (1.113) is under it.
        pytest.param(Figure.ms(0.00109), Figure.ms(0.000904), 1.15, "✗", id="issue-row-missed"),
        pytest.param(Figure.seconds(0.988), Figure.seconds(0.673), 1.5, "✓", id="upload-row-met"),
        pytest.param(Figure.seconds(1.16), Figure.seconds(1.0), 1.15, "✗", id="just-over"),
        pytest.param(Figure.seconds(1.15), Figure.seconds(1.0), 1.15, "✓", id="at-target"),
    ],
)
def test_ratio_target_is_judged_on_the_shown_ratio(ours: object, anchor: object, max_ratio: float, mark: str) -> None:
    row = Row("2", "timed", ours, anchor=anchor, anchor_name="anchor", paired=1.113, max_ratio=max_ratio)
    cells = _cells(render_table([row]), "timed")

    assert cells["✓/✗"] == mark
    assert cells["target"] == f"ratio ≤ {max_ratio:g}x"
    assert row.verdict is (mark == "✓")


@pytest.mark.parametrize(
    ("ours", "limit", "strict", "mark"),
    [
        pytest.param(Figure(6.2, "ms"), Figure(5, "ms"), False, "✗", id="over-limit"),
        pytest.param(Figure(1.64, "ms"), Figure(5, "ms"), False, "✓", id="under-limit"),
        pytest.param(Figure(5.0, "ms"), Figure(5, "ms"), True, "✗", id="strictly-below-not-met-at-limit"),
        pytest.param(Figure.mib(33 * 2**20), Figure.mib(32 * 2**20), False, "✗", id="memory-over"),
    ],
)
def test_value_target_is_judged_on_the_shown_figure(ours: object, limit: object, strict: bool, mark: str) -> None:
    row = Row("6", "measured", ours, max_value=limit, strict=strict)
    assert _cells(render_table([row]), "measured")["✓/✗"] == mark


def test_benchmark_judged_target_renders_its_verdict() -> None:
    rendered = render_table(
        [
            Row("4", "lockouts", "1 (7)", target="0 lockouts", ok=False),
            Row("4", "no target", Figure.seconds(9.11)),
        ]
    )
    assert _cells(rendered, "lockouts")["✓/✗"] == "✗"
    assert _cells(rendered, "no target")["target"] == "report only"
    assert _cells(rendered, "no target")["✓/✗"] == ""


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        pytest.param({"anchor": Figure.seconds(1.0)}, "same unit", id="anchor-in-another-unit"),
        pytest.param({"max_ratio": 1.2}, "needs an anchor", id="ratio-target-without-anchor"),
        pytest.param({"max_value": Figure(5, "ms"), "target": "x", "ok": True}, "one target", id="two-targets"),
        pytest.param({"max_value": Figure(5, "ms"), "ok": True}, "'ok' goes with", id="ok-without-text-target"),
    ],
)
def test_row_refuses_a_ratio_or_verdict_a_reader_could_not_check(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Row("9", "bad", Figure(1.0, "ms"), **kwargs)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.094, "1.09"), (0.000904 * 1000, "0.904"), (142.14, "142"), (0.9996, "1.00"), (4.0, "4.00"), (0.0, "0")],
)
def test_figures_print_three_significant_digits(value: float, text: str) -> None:
    assert table.significant(value) == text
