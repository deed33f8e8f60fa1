"""OpenLineage for the operators: which adapter folder became which finetune, which model and finetune ran.

The ``apache-airflow-providers-openlineage`` provider is optional. Its listener calls the operators'
``get_openlineage_facets_on_complete`` after a task succeeds; they call the builders here, which
import OpenLineage inside the function and return ``None`` when it is not installed, so operator
modules import nothing from it and behave the same without it.

Dataset names follow the asset URIs (:mod:`airflow_provider_cfai.assets`) the way OpenLineage names
object storage: namespace ``cloudflare-workers-ai://<account id>``, name ``finetunes/<quoted name>``
or ``models/<model>``. Adapter folders and files: namespace ``file`` and the absolute path when
local, ``<scheme>://<bucket>`` and the key on object storage.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from airflow_provider_cfai._urls import redact_url
from airflow_provider_cfai.assets import SCHEME, finetune_uri

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Asset
    from openlineage.client.event_v2 import Dataset

    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    #: What the operators' ``get_openlineage_facets_on_complete`` return.
    Lineage: TypeAlias = OperatorLineage[Dataset, Any]

__all__ = [
    "asset_to_openlineage",
    "create_lineage",
    "finetune_dataset_name",
    "inference_lineage",
    "is_finetune_id",
    "location_dataset_name",
    "model_dataset_name",
    "upload_lineage",
]

log = logging.getLogger(__name__)

_LOOKUP_TIMEOUT = 5.0


def finetune_dataset_name(account_id: str, finetune_name: str) -> tuple[str, str]:
    """``(namespace, name)`` of a finetune: the split of its asset URI."""
    parts = urlsplit(finetune_uri(account_id, finetune_name))
    return f"{SCHEME}://{parts.netloc}", parts.path.lstrip("/")


def model_dataset_name(account_id: str, model: str) -> tuple[str, str]:
    """``(namespace, name)`` of a Workers AI model, e.g. ``models/@cf/mistral/mistral-7b-instruct-v0.2-lora``."""
    namespace, _ = finetune_dataset_name(account_id, "-")
    return namespace, f"models/{model.strip()}"


def location_dataset_name(source: Any) -> tuple[str, str] | None:
    """``(namespace, name)`` of a folder or file: an adapter folder, a batch's input or output.

    ``source`` is a local path, a URL, an ``ObjectStoragePath`` or a ``LoraAdapter``; anything else
    (e.g. a list of records) gives ``None``. Computed from the location alone, with no storage
    access; user info, query strings and connection IDs are dropped.
    """
    from airflow_provider_cfai.adapters import LoraAdapter

    if isinstance(source, LoraAdapter):
        location = source.location
    elif isinstance(source, (str, os.PathLike)):
        location = os.fspath(source)
    elif hasattr(type(source), "fs"):  # an ObjectStoragePath prints as its URL; ``fs`` would connect
        location = str(source)
    else:
        return None
    if not isinstance(location, str) or not location.strip():
        return None
    if "://" not in location:
        return "file", os.path.abspath(location)
    # The data of a chained URL ("simplecache::s3://bucket/key") lives in its last link.
    parts = urlsplit(redact_url(location).split("::")[-1])
    host = parts.netloc.rpartition("@")[2]  # a connection ID names no dataset
    if parts.scheme == "file":
        return ("file://" + host if host else "file"), parts.path
    return f"{parts.scheme}://{host}", parts.path.strip("/")


def is_finetune_id(value: str) -> bool:
    """Whether a finetune reference is an ID (Cloudflare's are UUIDs) rather than a name."""
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def create_lineage(record: Mapping[str, Any] | None) -> Lineage | None:
    """Lineage of a ``CreateFinetuneOperator`` run, from the asset event ``extra`` it recorded.

    ``None`` without the OpenLineage provider, or when the task never got as far as a finetune.
    """
    ol = _openlineage()
    if ol is None or record is None:
        return None
    finetune = _finetune(ol, record["account_id"], record["finetune_name"], record["finetune_id"])
    return ol.OperatorLineage(inputs=_location(ol, record.get("adapter")), outputs=[finetune])


def upload_lineage(
    *, conn_id: str, account_id: str | None, finetune: str, adapter: Any, record: Mapping[str, Any] | None = None
) -> Lineage | None:
    """Lineage of an upload: the adapter folder in, the finetune (given by ID or name) out.

    ``None`` without the OpenLineage provider. ``record`` is the finetune as the task already read
    it; without it, an ID costs one look-up of the finetune's name.
    """
    ol = _openlineage()
    if ol is None:
        return None
    hook = _lookup_hook(conn_id)
    account = _account(hook, account_id)
    if record is not None and record.get("name") and record.get("id"):
        resolved: tuple[str, str | None] | None = (str(record["name"]), str(record["id"]))
    else:
        resolved = _resolve_finetune(hook, finetune, account_id)
    outputs = [] if resolved is None else [_finetune(ol, account, *resolved)]
    return ol.OperatorLineage(inputs=_location(ol, adapter), outputs=outputs)


def inference_lineage(
    *, conn_id: str, account_id: str | None, model: str, lora: str | None, inputs: Any = None, output: Any = None
) -> Lineage | None:
    """Lineage of an inference: the model and, when one was applied, the finetune in.

    A batch also passes where its ``inputs`` file and ``output`` are (paths, URLs or
    ``ObjectStoragePath``; other values are left out). ``None`` without the OpenLineage provider. A
    finetune given by ID costs one look-up of its name.
    """
    ol = _openlineage()
    if ol is None:
        return None
    hook = _lookup_hook(conn_id)
    account = _account(hook, account_id)
    datasets = [ol.Dataset(*model_dataset_name(account, model))]
    if isinstance(lora, str) and lora.strip() and (resolved := _resolve_finetune(hook, lora, account_id)):
        datasets.append(_finetune(ol, account, *resolved))
    return ol.OperatorLineage(inputs=datasets + _location(ol, inputs), outputs=_location(ol, output))


def asset_to_openlineage(asset: Asset, lineage_context: Any) -> Dataset:
    """Airflow's ``asset-uris`` converter: a finetune asset as the dataset the operators report."""
    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(asset.uri)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


class _OpenLineage:
    def __init__(self) -> None:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
        from openlineage.client.facet_v2 import symlinks_dataset

        self.OperatorLineage = OperatorLineage
        self.Dataset = Dataset
        self.symlinks = symlinks_dataset


def _openlineage() -> _OpenLineage | None:
    try:
        return _OpenLineage()
    except ImportError:
        return None


def _finetune(ol: _OpenLineage, account_id: str, finetune_name: str, finetune_id: str | None) -> Dataset:
    namespace, name = finetune_dataset_name(account_id, finetune_name)
    facets: dict[str, Any] = {}
    if finetune_id:  # the finetune is addressable by its ID too: record that as an alternative name
        identifier = ol.symlinks.Identifier(namespace=namespace, name=f"finetunes/{finetune_id}", type="FINETUNE_ID")
        facets["symlinks"] = ol.symlinks.SymlinksDatasetFacet(identifiers=[identifier])
    return ol.Dataset(namespace=namespace, name=name, facets=facets)


def _location(ol: _OpenLineage, source: Any) -> list[Dataset]:
    where = location_dataset_name(source) if source is not None else None
    return [] if where is None else [ol.Dataset(namespace=where[0], name=where[1])]


def _lookup_hook(conn_id: str) -> CloudflareAIHook:
    from airflow_provider_cfai.hooks.cloudflare_ai import CloudflareAIHook

    # Lineage runs after the task succeeded, under the listener's own time limit: one short try.
    return CloudflareAIHook(conn_id, timeout=_LOOKUP_TIMEOUT, max_retries=0)


def _account(hook: CloudflareAIHook, account_id: str | None) -> str:
    return (account_id or "").strip() or hook.settings.account_id


def _resolve_finetune(hook: CloudflareAIHook, reference: str, account_id: str | None) -> tuple[str, str | None] | None:
    """``(name, id)`` of a finetune given by name or ID; ``None`` if an ID cannot be looked up."""
    reference = reference.strip()
    if not is_finetune_id(reference):
        return reference, None
    try:
        finetune = hook.find_finetune(reference, account_id=account_id)
    except Exception as error:  # lineage is best effort: a failed look-up leaves the finetune out
        log.info("OpenLineage: could not look up the name of finetune %s: %s", reference, error)
        return None
    finally:
        if "session" in hook.__dict__:  # built for this one call
            hook.session.close()
    if not finetune or not finetune.get("name"):
        log.info("OpenLineage: finetune %s not found; it is left out of the lineage", reference)
        return None
    return str(finetune["name"]), reference
