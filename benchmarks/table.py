"""The results table: figures as shown, ratios computed from what is shown, and the verdicts.

A reader must be able to check every ratio and every ✓/✗ with the table alone. So a figure is
rounded once, to what the table prints (:class:`Figure`), the ratio column is the printed "ours"
divided by the printed anchor, and a target is judged on the printed number it names. A benchmark
that paired its rounds (ours and anchor timed back to back, round after round) may add the median
of those per-round ratios: it has its own column, is never judged, and its raw samples belong in
the report's "Raw samples" section so that it too can be recomputed.

Adding a row (see ``benchmarks/README.md``)::

    Row("7", "batch of 100 prompts, direct engine", Figure.seconds(ours), anchor=Figure.seconds(floor),
        anchor_name="floor the limit allows", max_ratio=1.2)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

MIB = 2**20
DIGITS = 3  # significant digits of every figure and ratio the table prints

RATIO_HEADER = "ratio (ours ÷ anchor, as shown)"
PAIRED_HEADER = "median of paired per-round ratios"
HEADER = ("#", "figure", "ours (median)", "anchor (same run)", RATIO_HEADER, PAIRED_HEADER, "target", "✓/✗")
NOTES = (
    f"- **{RATIO_HEADER}** is the figure in *ours* divided by the figure in *anchor*, both exactly as "
    f"printed, to {DIGITS} significant digits: divide the two cells to check it.",
    "- **Targets** of the form `ratio ≤ Nx` are judged on that ratio as printed; the other targets on "
    "the *ours* figure as printed. A missed target shows ✗ and makes a full run fail.",
    f"- **{PAIRED_HEADER}**: where ours and its anchor were timed back to back in each round, the "
    "median over rounds of (ours ÷ anchor) in the same round. It resists drift between rounds, "
    "so it can differ from the ratio of the medians; it is shown for information and never judged. "
    "Its inputs are under *Raw samples*.",
)


def significant(value: float, digits: int = DIGITS) -> str:
    """``value`` rounded to ``digits`` significant digits, in plain notation (``0.0115``, ``142``, ``4.00``)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    rounded = round(value, decimals)
    if rounded != 0:  # rounding can carry into the next power of ten (0.9996 -> 1.00, not 1.000)
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{value:.{decimals}f}"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A number with its unit, as the table prints it (``DIGITS`` significant digits).

    :param amount: the number in ``unit`` (use the constructors to convert from seconds or bytes).
    :param unit: ``"ms"``, ``"s"``, ``"MiB"``, or ``""`` for a plain count.
    """

    amount: float
    unit: str = ""

    @classmethod
    def ms(cls, seconds: float) -> Figure:
        return cls(seconds * 1000, "ms")

    @classmethod
    def seconds(cls, seconds: float) -> Figure:
        return cls(seconds, "s")

    @classmethod
    def mib(cls, n_bytes: float) -> Figure:
        return cls(n_bytes / MIB, "MiB")

    @property
    def shown(self) -> float:
        """The number exactly as printed; ratios and verdicts use this, never ``amount``."""
        return float(significant(self.amount))

    def __str__(self) -> str:
        text = significant(self.amount)
        return f"{text} {self.unit}" if self.unit else text


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table.

    :param bench: the benchmark's number (``"1"`` … ``"6"``).
    :param figure: what is measured, with its sizes and sample count.
    :param ours: our figure (a :class:`Figure`), or text for a non-numeric result.
    :param anchor: the figure ours is compared with, measured in the same run, in the same unit.
    :param anchor_name: what the anchor is (``"bare requests"``).
    :param paired: the median of paired per-round ratios, when the benchmark paired its rounds.
    :param max_ratio: target: the printed ratio must be at most this; the table judges it.
    :param max_value: target: the printed ``ours`` must be at most (``strict``: below) this; the
        table judges it.
    :param target: any other target, as text; the benchmark judges it and passes ``ok``.
    :param ok: the benchmark's verdict on ``target``.
    """

    bench: str
    figure: str
    ours: Figure | str
    anchor: Figure | None = None
    anchor_name: str = ""
    paired: float | None = None
    max_ratio: float | None = None
    max_value: Figure | None = None
    strict: bool = False
    target: str = ""
    ok: bool | None = None

    def __post_init__(self) -> None:
        kinds = [k for k, v in (("max_ratio", self.max_ratio), ("max_value", self.max_value)) if v is not None]
        if self.target:
            kinds.append("target")
        if len(kinds) > 1:
            raise ValueError(f"row {self.figure!r}: give one target, not {' and '.join(kinds)}")
        if (self.ok is not None) != bool(self.target):
            raise ValueError(f"row {self.figure!r}: 'ok' goes with a text 'target' (the table judges the others)")
        if self.anchor is not None and (not isinstance(self.ours, Figure) or self.ours.unit != self.anchor.unit):
            raise ValueError(f"row {self.figure!r}: ours and anchor need the same unit, so the ratio is checkable")
        if self.max_ratio is not None and self.anchor is None:
            raise ValueError(f"row {self.figure!r}: a ratio target needs an anchor")
        if self.max_value is not None and (not isinstance(self.ours, Figure) or self.ours.unit != self.max_value.unit):
            raise ValueError(f"row {self.figure!r}: max_value needs a Figure in the unit of ours")

    @property
    def ratio(self) -> float | None:
        """Ours ÷ anchor, both as printed, rounded as printed; ``None`` without an anchor."""
        if self.anchor is None or not isinstance(self.ours, Figure) or self.anchor.shown == 0:
            return None
        return float(significant(self.ours.shown / self.anchor.shown))

    @property
    def verdict(self) -> bool | None:
        """✓ (True) / ✗ (False) on the printed figures; ``None`` for a figure reported without a target."""
        if self.max_ratio is not None:
            return self.ratio is not None and self.ratio <= self.max_ratio
        if self.max_value is not None:
            assert isinstance(self.ours, Figure)
            limit = self.max_value.shown
            return self.ours.shown < limit if self.strict else self.ours.shown <= limit
        return self.ok

    def target_text(self) -> str:
        if self.max_ratio is not None:
            return f"ratio ≤ {self.max_ratio:g}x"
        if self.max_value is not None:
            return f"{'<' if self.strict else '≤'} {self.max_value}"
        return self.target or "report only"

    def cells(self) -> list[str]:
        anchor = "—" if self.anchor is None else f"{self.anchor_name}: {self.anchor}".lstrip(": ")
        ratio = "—" if self.ratio is None else f"{significant(self.ratio)}x"
        paired = "—" if self.paired is None else f"{significant(self.paired)}x"
        mark = {None: "", True: "✓", False: "✗"}[self.verdict]
        return [self.bench, self.figure, str(self.ours), anchor, ratio, paired, self.target_text(), mark]


def render_table(rows: Sequence[Row]) -> str:
    """The Markdown table, followed by the notes that say how to read its ratio columns."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |")
    return "\n".join([*lines, "", *NOTES])
