"""Operator extra link to the account's Workers AI page in the Cloudflare dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: The dashboard's per-account Workers AI page (its account-agnostic form is the deep link
#: ``https://dash.cloudflare.com/?to=/:account/ai/workers-ai`` used in Cloudflare's docs).
DASHBOARD_URL = "https://dash.cloudflare.com/{account_id}/ai/workers-ai"


class CloudflareWorkersAILink(BaseOperatorLink):
    """ "Cloudflare Workers AI" button on a task: opens the account's Workers AI dashboard page.

    Airflow 3 serves extra links from XCom: the operator stores the finished URL with
    :meth:`persist` as the first thing it does (the URL depends only on the account), so a task
    that fails still has its link, Airflow finds the XCom it looks for when the task ends, and the
    UI needs neither the connection nor the operator.
    """

    name = "Cloudflare Workers AI"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(url) if url else ""

    @classmethod
    def persist(cls, context: Any, account_id: str) -> None:
        """Store the link for this task instance (no-op outside a running task)."""
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            ti.xcom_push(key=cls().xcom_key, value=DASHBOARD_URL.format(account_id=account_id))
