"""The scheduler's own steps for asset-triggered DAGs, called one at a time on the session's DB.

``dag.test()`` makes manual runs only; these helpers put a DAG in the metadata DB as the DAG
processor would, let ``SchedulerJobRunner`` create the runs its asset events call for, and run such
a run's tasks the way ``dag.test()`` runs its own (same in-process task runner).
"""

from __future__ import annotations

from typing import Any

from dag_runner import DAGS_FOLDER, load_dag
from sqlalchemy import delete, select, update


def serialize_dag(dag_id: str) -> None:
    """Parse ``dags_examples/<dag_id>.py`` and write it to the DB (DagModel + serialized DAG)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils.session import create_session

    try:
        from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import BundleDagBag, sync_bag_to_db

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    bag = BundleDagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"), bundle_path=DAGS_FOLDER)
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)


def set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused))


def queued_asset_uris(dag_id: str) -> set[str]:
    """URIs of the assets whose events queued ``dag_id`` (its ``AssetDagRunQueue`` rows)."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            select(AssetModel.uri)
            .join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
            .where(AssetDagRunQueue.target_dag_id == dag_id)
        )
        return set(rows)


def clear_queue(dag_id: str) -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def forget_asset_events(uri_prefix: str) -> None:
    """Delete the events of assets under ``uri_prefix``, as in a fresh deployment.

    A DAG scheduled on an alias receives, on its first run, every earlier event of the alias
    (Airflow's ``catchup=False`` cut-off covers only assets named in the schedule); other tests of
    the session leave such events behind, for finetunes the reset emulator no longer holds.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        assets = select(AssetModel.id).where(AssetModel.uri.startswith(uri_prefix))
        session.execute(delete(AssetEvent).where(AssetEvent.asset_id.in_(assets)))


def create_dag_runs() -> None:
    """One pass of the scheduler's run creation (``SchedulerJobRunner._create_dagruns_for_dags``)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    runner = SchedulerJobRunner(job=Job())
    with create_session() as session, prohibit_commit(session) as guard:
        runner._create_dagruns_for_dags(guard, session)


def asset_triggered_runs(dag_id: str) -> list[dict[str, Any]]:
    """The DAG's asset-triggered runs: run ID, state, and the events they consumed (URI, extra, source run)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.ASSET_TRIGGERED)
        )
        return [
            {
                "run_id": run.run_id,
                "state": str(run.state),
                "events": [(event.asset.uri, event.extra, event.source_run_id) for event in run.consumed_asset_events],
            }
            for run in runs
        ]


def run_existing_dag_run(dag_id: str, run_id: str) -> str:
    """Run a queued run's tasks to completion as ``dag.test()`` does; returns the run's final state."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    dag = load_dag(dag_id)
    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        assert run is not None, f"no run {run_id} of {dag_id}"
        run.dag = DBDagBag().get_dag_for_run(run, session)
        run.state = DagRunState.RUNNING
        session.commit()
        for _ in range(50):  # a bound instead of a sleep loop: every pass runs at least one task
            session.expire_all()
            if run.state != DagRunState.RUNNING:
                break
            schedulable, _ = run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = timezone.utcnow()
            session.commit()
            for ti in run.get_task_instances(state=[TaskInstanceState.SCHEDULED], session=session):
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        session.expire_all()
        return str(run.state)
