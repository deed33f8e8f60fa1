"""Run a DAG from dags_examples/ with ``dag.test()`` on the session's SQLite DB and read its XComs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags_examples"


def load_dag(dag_id: str, folder: Path = DAGS_FOLDER) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(dag_id)
    assert dag is not None, f"{dag_id} not found in {folder}"
    return dag


def run_dag(dag_id: str, logical_date: str = "2026-01-05", folder: Path = DAGS_FOLDER) -> Any:
    """Run the DAG once; returns the DagRun."""
    return load_dag(dag_id, folder).test(logical_date=pendulum.parse(logical_date))


def xcom(dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
    """An XCom a task pushed (``return_value`` by default), read back from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        )
    assert value is not None, f"no {key} XCom for {dag_id}.{task_id}[{map_index}]"
    return XComModel.deserialize_value(_Row(value))


class _Row:
    """What ``XComModel.deserialize_value`` expects: an object with a ``value`` attribute."""

    def __init__(self, value: Any) -> None:
        self.value = value
