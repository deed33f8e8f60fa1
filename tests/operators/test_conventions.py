"""Conventions Airflow users rely on: the docstring says which arguments are templated, truthfully."""

from __future__ import annotations

import inspect
import re

import pytest

from airflow_provider_cfai.operators.finetune import CreateFinetuneOperator, UploadFinetuneAssetsOperator
from airflow_provider_cfai.operators.inference import WorkersAIRunOperator

OPERATORS = [CreateFinetuneOperator, UploadFinetuneAssetsOperator, WorkersAIRunOperator]


def documented_params(operator: type) -> dict[str, str]:
    """Each ``:param name:`` of the class docstring and its text (continuation lines included)."""
    doc = inspect.getdoc(operator) or ""
    blocks = re.split(r"^:param ", doc, flags=re.MULTILINE)[1:]
    return {block.partition(":")[0].strip(): " ".join(block.partition(":")[2].split()) for block in blocks}


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda cls: cls.__name__)
def test_templated_in_the_docstring_is_exactly_the_template_fields(operator: type) -> None:
    params = documented_params(operator)
    templated = {name for name, text in params.items() if text.endswith("(templated)")}

    assert set(operator.template_fields) <= set(params)  # every template field is documented
    assert templated == set(operator.template_fields)


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda cls: cls.__name__)
def test_every_constructor_argument_is_documented(operator: type) -> None:
    own = set(inspect.signature(operator.__init__).parameters) - {"self", "kwargs"}

    assert own  # the signature was really read
    assert own | {"account_id", "cloudflare_conn_id"} <= set(documented_params(operator))
