"""One rule for whole numbers: max_finetunes, a batch's concurrency, max_retries and rate_limit_sharers."""

from __future__ import annotations

import pytest

from airflow_provider_cfai._numbers import whole_number


@pytest.mark.parametrize(
    ("value", "minimum", "number"),
    [
        pytest.param(3, 1, 3, id="int"),
        pytest.param(0, 0, 0, id="zero-when-allowed"),
        pytest.param(" 7 ", 1, 7, id="rendered-string"),
        pytest.param(2.0, 1, 2, id="json-float-without-fraction"),
        pytest.param("2.0", 1, 2, id="string-float-without-fraction"),
        pytest.param(0, 1, None, id="below-minimum"),
        pytest.param("-1", 0, None, id="negative-string"),
        pytest.param(2.5, 0, None, id="fraction"),
        pytest.param("2.5", 0, None, id="string-fraction"),
        pytest.param(True, 0, None, id="bool-is-no-count"),
        pytest.param(float("nan"), 0, None, id="nan"),
        pytest.param("inf", 0, None, id="infinity"),
        pytest.param("three", 0, None, id="word"),
        pytest.param(None, 0, None, id="none"),
        pytest.param([3], 0, None, id="list"),
    ],
)
def test_whole_number(value: object, minimum: int, number: int | None) -> None:
    assert whole_number(value, minimum=minimum) == number
