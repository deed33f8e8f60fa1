"""Whole numbers from what users write: Python values, rendered templates and connection extras."""

from __future__ import annotations

__all__ = ["whole_number"]


def whole_number(value: object, *, minimum: int = 0) -> int | None:
    """``value`` as an int of at least ``minimum``, or ``None`` when it is not one.

    Takes an int, a float with no fraction (JSON extras), or a string of either (a rendered template,
    a URI's extra); refuses booleans (``True`` is no count), fractions, NaN and infinities, so each
    caller raises its own error naming the field.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float):
        if not value.is_integer():  # False for NaN and the infinities too
            return None
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        return None
    return value
