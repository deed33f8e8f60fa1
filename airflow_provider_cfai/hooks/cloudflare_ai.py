"""Hook for the Cloudflare Workers AI finetune API."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from airflow.sdk import BaseHook

from airflow_provider_cfai.adapters import ADAPTER_FILE_NAMES, AdapterFile, LoraAdapter, load_adapter
from airflow_provider_cfai.exceptions import (
    CloudflareAIError,
    CloudflareAPIError,
    CloudflareConfigError,
    CloudflareInputError,
    CloudflarePermanentAPIError,
)
from airflow_provider_cfai.hooks._connection import (
    ConnectionSettings,
    checked_account_id,
    missing_connection_error,
    read_settings,
)
from airflow_provider_cfai.hooks._finetunes import oldest_named
from airflow_provider_cfai.hooks._pacing import Gate, gate_for_settings
from airflow_provider_cfai.hooks._responses import BATCH_POLL, BATCH_SUBMIT, unwrap
from airflow_provider_cfai.policy import (
    AttemptFailed,
    after_transport_failure,
    asset_already_uploaded,
    kv_key_missing,
)

if TYPE_CHECKING:
    import requests

    from airflow_provider_cfai.adapters import AdapterSource

_CONNECT_TIMEOUT = 10.0
_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
# Larger socket writes than http.client's 8 KiB default keep a 300 MB upload near wire speed.
_UPLOAD_BLOCKSIZE = 1024 * 1024


class CloudflareAIHook(BaseHook):
    """Talk to the Cloudflare Workers AI finetune API.

    Credentials come from an Airflow connection of type ``cloudflare_ai``: login is the account ID,
    password an API token (``Authorization: Bearer``); with no password, extras ``email`` and
    ``api_key`` select the legacy Global API key scheme. ``host`` may hold a full base URL (tests
    point it at the emulator). Extras ``timeout``, ``max_retries``, ``retry_budget`` (seconds),
    ``proxies`` and ``verify`` tune the transport. Every process of a host paces one token together;
    extras ``rate_limit_sharers`` (hosts sharing the token) or ``redis_url`` / ``redis_conn_id`` (one
    budget in Redis) extend that across hosts (:mod:`airflow_provider_cfai.hooks._pacing`).

    Every call follows :mod:`airflow_provider_cfai.policy`: 429 waits ``Retry-After``; 5xx, 408,
    dropped connections and timeouts back off exponentially with jitter; other 4xx fail at once;
    ``retry_budget`` bounds the time spent waiting between attempts. A create whose outcome is
    unknown is never re-sent blindly: the hook looks the name up first. Its async twin, for the
    triggerer and the batch engines, is
    :class:`~airflow_provider_cfai.hooks.cloudflare_ai_async.CloudflareAIAsyncHook`.

    :param cloudflare_conn_id: the Airflow connection to use.
    :param timeout: overrides the connection's ``timeout`` extra (seconds per request).
    :param max_retries: overrides the connection's ``max_retries`` extra.
    :param retry_budget: overrides the connection's ``retry_budget`` extra (seconds one call may
        spend waiting between attempts).
    """

    conn_name_attr = "cloudflare_conn_id"
    default_conn_name = "cloudflare_ai_default"
    conn_type = "cloudflare_ai"
    hook_name = "Cloudflare Workers AI"

    def __init__(
        self,
        cloudflare_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_budget: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cloudflare_conn_id = cloudflare_conn_id
        self._overrides = {"timeout": timeout, "max_retries": max_retries, "retry_budget": retry_budget}
        # Replaced by tests to wait on a fake clock.
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloudflare_conn_id={self.cloudflare_conn_id!r})"

    # -- connection form (Airflow 3.1; 3.2+ reads the same from get_provider_info) ------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the standard connection fields."""
        from airflow_provider_cfai import CONNECTION_FORM

        behaviour = CONNECTION_FORM["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form (needs the FAB UI packages, as on Airflow 3.1)."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField

        from airflow_provider_cfai import CONNECTION_FORM

        widgets: dict[str, Any] = {}
        for name, spec in CONNECTION_FORM["conn-fields"].items():
            label = lazy_gettext(spec["label"])
            if spec["schema"].get("format") == "password":
                widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget())
            elif "integer" in spec["schema"]["type"]:
                widgets[name] = IntegerField(label, widget=BS3TextFieldWidget())
            else:
                widgets[name] = StringField(label, widget=BS3TextFieldWidget())
        return widgets

    # -- connection -------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The checked connection settings (read on first use, never at construction)."""
        try:
            conn = self.get_connection(self.cloudflare_conn_id)
        except Exception as error:
            missing = missing_connection_error(self.cloudflare_conn_id, self.conn_type, error)
            if missing is None:
                raise
            raise missing from None
        return read_settings(conn, self.cloudflare_conn_id, self.conn_type, self._overrides)

    def _account(self, account_id: str | None) -> str:
        if account_id is None or not account_id.strip():
            return f"/accounts/{self.settings.account_id}"
        return f"/accounts/{checked_account_id(account_id.strip())}"

    @cached_property
    def session(self) -> requests.Session:
        """One pooled HTTP session per hook, carrying auth and the User-Agent."""
        import requests

        from airflow_provider_cfai.hooks._connection import user_agent
        from airflow_provider_cfai.hooks._transport import BlockSizeAdapter

        session = requests.Session()
        adapter = BlockSizeAdapter(blocksize=_UPLOAD_BLOCKSIZE, pool_maxsize=16)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update(
            {"User-Agent": user_agent(f"requests/{requests.__version__}"), "Accept": "application/json"}
        )
        session.headers.update(self.settings.auth_headers)
        session.proxies.update(self.settings.proxies)
        session.verify = self.settings.verify
        return session

    def get_conn(self) -> requests.Session:
        """Return the HTTP session (Airflow's conventional accessor)."""
        return self.session

    @cached_property
    def _gate(self) -> Gate:
        return gate_for_settings(self.settings)

    # -- transport --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        upload: Callable[[], contextlib.AbstractContextManager[tuple[IO[bytes], str]]] | None = None,
        recover: Callable[[], Any] | None = None,
        resend_unknown: bool = True,
        raw: bool = False,
        needs: tuple[str, ...] | None = None,
        unknown_context: str | None = None,
    ) -> Any:
        """Send one API call under the retry policy and return the envelope's ``result``.

        :param raw: return a success's body as bytes instead of unwrapping an envelope (a Workers
            KV value); error answers are still read as envelopes.

        :param resend_unknown: ``False`` for a call that must not be repeated and cannot be looked up:
            after an attempt whose outcome is unknown, it fails instead of being sent again.
        :param needs: what a success must carry (:func:`~airflow_provider_cfai.hooks._responses.unwrap`).
        :param unknown_context: prefixes the error when the call gives up after an unknown outcome:
            what may exist now and what to check.
        :param recover: for non-idempotent calls: after an attempt whose outcome is unknown (the
            request may have been applied), called before trying again, as part of the same attempt
            and the same waiting budget; a non-``None`` return value is taken as the call's result
            instead of re-sending. It must make single attempts (``_send``), never retry on its own.
        """
        from airflow_provider_cfai.hooks._retry import RetryLoop

        loop = RetryLoop(
            self.settings,
            self.cloudflare_conn_id,
            log=self.log,
            resend_unknown=resend_unknown,
            unknown_context=unknown_context,
        )

        def send() -> Any:
            return self._send(method, path, json=json, params=params, upload=upload, needs=needs, raw=raw)

        return loop.run(send, recover=recover, sleep=self._sleep)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        upload: Callable[[], contextlib.AbstractContextManager[tuple[IO[bytes], str]]] | None = None,
        raw: bool = False,
        needs: tuple[str, ...] | None = None,
    ) -> Any:
        """One attempt: the answer's ``result``, or :class:`AttemptFailed` saying what the policy needs."""
        import requests

        from airflow_provider_cfai.hooks._transport import describe_transport_error, may_have_been_sent

        settings = self.settings
        timeout = (min(_CONNECT_TIMEOUT, settings.timeout), settings.timeout)
        window = self._gate.acquire()
        answer = None  # the response's headers: Ratelimit and Ratelimit-Policy pace what follows
        try:
            with upload() if upload is not None else contextlib.nullcontext((None, None)) as (body, ctype):
                headers = {"Content-Type": ctype} if ctype else None
                response = self.session.request(
                    method,
                    settings.base_url + path,
                    json=json,
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                )
            answer = response.headers
        except requests.exceptions.RequestException as exc:
            detail = describe_transport_error(exc, timeout[1], settings.base_url)
            error = CloudflareAPIError(method, path, None, detail=detail)
            raise after_transport_failure(error, connected=may_have_been_sent(exc)) from exc
        finally:
            self._gate.release(window, answer)
        self.log.debug("%s %s -> HTTP %s", method, path, response.status_code)
        return unwrap(response, method, path, needs=needs, raw=raw)

    # -- finetunes --------------------------------------------------------------------------------

    def create_finetune(
        self,
        model: str,
        name: str,
        *,
        description: str | None = None,
        public: bool = False,
        account_id: str | None = None,
    ) -> dict[str, Any]:
        """Register a finetune (``POST /accounts/{id}/ai/finetunes``) and return Cloudflare's ``result``.

        If the outcome of the request is unknown (timeout, dropped connection, 5xx), the hook lists
        the account's finetunes and returns the one with this name and model before trying again,
        so a retry never makes a duplicate.
        """
        model, name = _required("model", model), _required("name", name)
        body: dict[str, Any] = {"model": model, "name": name, "public": bool(public)}
        if description is not None:
            body["description"] = description

        def recover() -> dict[str, Any] | None:
            found = self._find_exact(name, model, account_id=account_id)
            if found is not None:
                self.log.info("Finetune %s (%s) was created by an earlier attempt", found.get("id"), name)
            return found

        path = f"{self._account(account_id)}/ai/finetunes"
        lost = (
            f"Finetune {name!r} of {model} may have been created but its answer was lost; look for it by "
            "name (find_finetune) before creating it again"
        )
        result: dict[str, Any] = self._request(
            "POST", path, json=body, recover=recover, needs=("id",), unknown_context=lost
        )
        return result

    def list_finetunes(self, *, account_id: str | None = None) -> list[dict[str, Any]]:
        """List the account's finetunes as a flat list.

        Cloudflare's spec, docs and clients disagree on the shape of ``result`` (an object, an array,
        an array in an array); all three come back flat.
        """
        result = self._request("GET", f"{self._account(account_id)}/ai/finetunes")
        return _flatten(result)

    def find_finetune(self, name_or_id: str, *, account_id: str | None = None) -> dict[str, Any] | None:
        """Return the finetune with this ID or name (the oldest if names repeat), or ``None``."""
        name_or_id = _required("name_or_id", name_or_id)
        finetunes = self.list_finetunes(account_id=account_id)
        for finetune in finetunes:
            if finetune.get("id") == name_or_id:
                return finetune
        return oldest_named(finetunes, name_or_id)

    def _find_exact(self, name: str, model: str, *, account_id: str | None) -> dict[str, Any] | None:
        # One attempt: this runs inside a create's retry loop, whose budget it must not exceed.
        finetunes = _flatten(self._send("GET", f"{self._account(account_id)}/ai/finetunes"))
        return oldest_named(finetunes, name, model=model)

    def list_public_finetunes(
        self, *, limit: int = 20, offset: int = 0, order_by: str | None = None
    ) -> list[dict[str, Any]]:
        """One page of Cloudflare's public finetunes (``GET /accounts/{id}/ai/finetunes/public``)."""
        if limit < 1 or offset < 0:
            raise CloudflareInputError(f"limit must be >= 1 and offset >= 0, got limit={limit}, offset={offset}")
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if order_by:
            params["orderBy"] = order_by
        result = self._request("GET", f"{self._account(None)}/ai/finetunes/public", params=params)
        return _flatten(result)

    def iter_public_finetunes(self, *, page_size: int = 100, order_by: str | None = None) -> Iterator[dict[str, Any]]:
        """Every public finetune, fetched page by page until a short page."""
        offset = 0
        while True:
            page = self.list_public_finetunes(limit=page_size, offset=offset, order_by=order_by)
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    # -- assets -----------------------------------------------------------------------------------

    def upload_finetune_asset(
        self,
        finetune_id: str,
        file_name: str,
        source: str | os.PathLike[str] | AdapterFile,
        *,
        account_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Upload one adapter file, streamed from disk or object storage, never read whole.

        :param finetune_id: the finetune's ID (or name).
        :param file_name: ``adapter_config.json`` or ``adapter_model.safetensors``.
        :param source: a local path or an :class:`~airflow_provider_cfai.adapters.AdapterFile`.
        :return: the legacy ``result`` object when Cloudflare sends one, else ``None``.
        """
        finetune_id = _required("finetune_id", finetune_id)
        if file_name not in ADAPTER_FILE_NAMES:
            raise CloudflareInputError(f"file_name must be one of {', '.join(ADAPTER_FILE_NAMES)}, got {file_name!r}")
        opener, size = _opener(source)
        path = f"{self._account(account_id)}/ai/finetunes/{quote(finetune_id, safe='')}/finetune-assets"

        @contextlib.contextmanager
        def multipart() -> Iterator[tuple[IO[bytes], str]]:
            from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor

            from airflow_provider_cfai.hooks._transport import ProgressLogger

            with opener() as handle:
                fields = [("file_name", file_name), ("file", (file_name, handle, "application/octet-stream"))]
                encoder = MultipartEncoder(fields=fields)
                if size < _PROGRESS_MIN_BYTES:
                    yield encoder, encoder.content_type
                    return
                progress = ProgressLogger(self.log, file_name, encoder.len)
                yield MultipartEncoderMonitor(encoder, progress), encoder.content_type

        self.log.info("Uploading %s (%d bytes) to finetune %s", file_name, size, finetune_id)
        try:
            result = self._request("POST", path, upload=multipart)
        except CloudflarePermanentAPIError as error:
            if not asset_already_uploaded(error):
                raise
            self.log.warning("Finetune %s already has %s (HTTP 409); keeping it", finetune_id, file_name)
            return None
        return result if isinstance(result, dict) else None

    def upload_adapter(self, finetune_id: str, adapter: AdapterSource, *, account_id: str | None = None) -> LoraAdapter:
        """Validate a LoRA adapter folder, then upload its two files to the finetune.

        :return: the validated adapter.
        """
        loaded = load_adapter(adapter)
        for adapter_file in loaded.files:
            self.upload_finetune_asset(finetune_id, adapter_file.name, adapter_file, account_id=account_id)
        return loaded

    # -- inference --------------------------------------------------------------------------------

    def run_model(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        lora: str | None = None,
        account_id: str | None = None,
    ) -> dict[str, Any]:
        """Run a Workers AI model (``POST /accounts/{id}/ai/run/{model}``), optionally with a finetune.

        :param inputs: the model's JSON input, e.g. ``{"prompt": "..."}`` or ``{"messages": [...]}``.
        :param lora: a finetune ID or name to apply.
        :return: Cloudflare's ``result`` (``{"response": ...}`` for text generation).
        """
        model = _required("model", model)
        if not isinstance(inputs, Mapping):
            raise CloudflareInputError(
                f"inputs must be a mapping such as {{'prompt': '...'}}, got {type(inputs).__name__}"
            )
        body = dict(inputs)
        if lora is not None:
            body["lora"] = lora
        if "lora" in body and (not isinstance(body["lora"], str) or not body["lora"].strip()):
            # Cloudflare ignores a lora it cannot read and runs the base model: a smoke test would pass.
            raise CloudflareInputError(
                f"lora must be a finetune ID or name (a non-empty string) or None, got {body['lora']!r}"
            )
        path = f"{self._account(account_id)}/ai/run/{quote(model, safe='/@')}"
        result = self._request("POST", path, json=body)
        return result if isinstance(result, dict) else {"result": result}

    # -- model catalog ----------------------------------------------------------------------------

    def list_models(
        self,
        *,
        search: str | None = None,
        task: str | None = None,
        author: str | None = None,
        per_page: int = 50,
        account_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Search the Workers AI model catalog (``GET /accounts/{id}/ai/models/search``), every page.

        Entries are returned as Cloudflare sends them (``name``, ``task``, ``properties`` ...), whose
        shapes vary: read them with :mod:`airflow_provider_cfai.hooks._catalog`. Not cached.

        :param search: text to look for; ``task``: a task name such as ``"Text Generation"``.
        :param per_page: models per request.
        """
        from airflow_provider_cfai.hooks import _catalog

        path = f"{self._account(account_id)}/ai/models/search"
        query = _catalog.search_query(search=search, task=task, author=author, per_page=per_page)
        return _catalog.read_pages(lambda page: self._request("GET", path, params={**query, "page": page}), per_page)

    def get_model(self, name: str, *, account_id: str | None = None) -> dict[str, Any] | None:
        """The catalog entry of model ``name``, or ``None`` when the account's catalog lacks it.

        Served from the account's whole catalog, cached for a few minutes in this process and in a file
        every process of the host shares (failures are remembered in memory for a minute), so many
        creates, even in separate task processes, cost one catalog read.
        """
        from airflow_provider_cfai.hooks import _catalog

        return _catalog.find(self.list_cached_models(account_id=account_id), _required("name", name))

    def list_cached_models(self, *, account_id: str | None = None) -> list[dict[str, Any]]:
        """The account's whole catalog from the cache (per process and per host; read at most every few minutes)."""
        from airflow_provider_cfai.hooks import _catalog

        key = (self.settings.base_url, self._account(account_id))
        return _catalog.CACHE.get(key, lambda: self.list_models(account_id=account_id))

    # -- asynchronous Batch API -------------------------------------------------------------------

    def submit_batch(
        self, model: str, requests: Iterable[Mapping[str, Any]], *, account_id: str | None = None
    ) -> dict[str, Any]:
        """Queue inputs on the Batch API (``POST /accounts/{id}/ai/run/{model}?queueRequest=true``).

        Cloudflare has no call to find a queued batch again, so a submit whose outcome is unknown (a
        timeout or 5xx after sending, an unreadable answer, one without ``request_id``) is not
        re-sent: it fails with :class:`~airflow_provider_cfai.exceptions.CloudflareOutcomeUnknownError`,
        which Airflow does not retry, rather than maybe queueing the inputs twice. Callers record the
        returned ``request_id`` at once.

        :param requests: the model's normal inputs, each optionally with ``external_reference``; the
            whole payload must stay under 10 MB (``batch.engines.plan_chunks`` splits it).
        :return: Cloudflare's ``result``: ``{"status": "queued", "request_id": ..., "model": ...}``.
        """
        model = _required("model", model)
        items = list(requests)
        if not items:
            raise CloudflareInputError("requests must hold at least one model input")
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise CloudflareInputError(
                    f"requests[{index}] must be a mapping such as {{'prompt': '...'}}, got {type(item).__name__}"
                )
        path = f"{self._account(account_id)}/ai/run/{quote(model, safe='/@')}"
        body = {"requests": [dict(item) for item in items]}
        lost = (
            f"A Batch API submit of {len(items)} input(s) to {model} may have been queued, but its answer was "
            "lost or had no request_id, and Cloudflare cannot list queued batches, so it is not sent again. "
            "Check the account's Workers AI usage for this model before re-running the task: a re-run "
            "submits these inputs again"
        )
        result: dict[str, Any] = self._request(
            "POST",
            path,
            json=body,
            params={"queueRequest": "true"},
            resend_unknown=False,
            needs=BATCH_SUBMIT,
            unknown_context=lost,
        )
        return result

    def poll_batch(self, model: str, request_id: str, *, account_id: str | None = None) -> dict[str, Any]:
        """Ask for a queued batch (``POST …/ai/run/{model}?queueRequest=true`` with ``{"request_id": ...}``).

        :return: ``{"status": "queued"|"running", ...}`` while pending; once done,
            ``{"responses": [{"id": <index>, "success": ..., "result": ...}, ...], "usage": {...}}``.
        """
        model, request_id = _required("model", model), _required("request_id", request_id)
        path = f"{self._account(account_id)}/ai/run/{quote(model, safe='/@')}"
        body = {"request_id": request_id}
        result: dict[str, Any] = self._request(
            "POST", path, json=body, params={"queueRequest": "true"}, needs=BATCH_POLL
        )
        return result

    # -- connection checks ------------------------------------------------------------------------

    def verify_token(self) -> dict[str, Any]:
        """Verify the API token: the account-token endpoint first, then the user-token one."""
        if not self.settings.token:
            raise CloudflareConfigError("Token verification needs an API token; this connection uses email + api_key")
        path = f"{self._account(None)}/tokens/verify"
        try:
            result: dict[str, Any] = self._request("GET", path, needs=())
        except CloudflarePermanentAPIError as account_error:
            # Each endpoint rejects the other kind of token, so a refusal here is not final yet.
            try:
                result = self._request("GET", "/user/tokens/verify", needs=())
            except CloudflarePermanentAPIError:
                raise account_error from None
        return result

    def test_connection(self) -> tuple[bool, str]:
        """Check credentials and account read-only; never raises and never echoes a secret."""
        step = "reading the connection"
        try:
            settings = self.settings
            token_note = "email + Global API key"
            if settings.token:
                step = "verifying the API token"
                status = self.verify_token().get("status")
                if status != "active":
                    return False, f"The API token is {status!r}, not 'active'; create a new token."
                token_note = "API token active"
            step = "listing finetunes"
            count = len(self.list_finetunes())
        except CloudflareAIError as error:
            # A refused account or token carries its hint (credentials_hint) in the message already.
            return False, f"Failed while {step}: {error}"
        except Exception as error:
            return False, f"Failed while {step}: {type(error).__name__}"
        return (
            True,
            f"Connected to account {settings.account_id} ({token_note}); {count} finetune(s) visible.",
        )

    # -- Workers KV: the serving pointer a Worker reads ---------------------------------------------

    def list_kv_namespaces(self, *, per_page: int = 100, account_id: str | None = None) -> list[dict[str, Any]]:
        """Every Workers KV namespace of the account (``GET /accounts/{id}/storage/kv/namespaces``), all pages."""
        path = f"{self._account(account_id)}/storage/kv/namespaces"
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            batch = _flatten(self._request("GET", path, params={"page": page, "per_page": per_page}))
            found.extend(batch)
            if len(batch) < per_page:
                return found
            page += 1

    def create_kv_namespace(self, title: str, *, account_id: str | None = None) -> dict[str, Any]:
        """Create a Workers KV namespace (``POST /accounts/{id}/storage/kv/namespaces``): ``{id, title, ...}``.

        Titles are unique per account, so a create whose outcome is unknown is looked up by title
        before it is sent again.
        """
        title = _required("title", title)
        path = f"{self._account(account_id)}/storage/kv/namespaces"

        def recover() -> dict[str, Any] | None:
            # One attempt, and only the first page: this runs inside the create's retry budget.
            listed = _flatten(self._send("GET", path, params={"page": 1, "per_page": 1000}))
            return next((ns for ns in listed if ns.get("title") == title), None)

        # ``needs``: a success without an ``id`` is an unknown outcome, looked up by title like a lost one.
        namespace: dict[str, Any] = self._request("POST", path, json={"title": title}, recover=recover, needs=("id",))
        return namespace

    def read_kv_value(self, namespace_id: str, key: str, *, account_id: str | None = None) -> bytes | None:
        """A KV key's value as stored (raw bytes, not an envelope), or ``None`` when the key does not exist.

        A missing namespace is an error (:class:`CloudflarePermanentAPIError`), not ``None``.
        """
        value = self._read_kv("values", namespace_id, key, account_id)
        return None if value is None else bytes(value)

    def read_kv_metadata(self, namespace_id: str, key: str, *, account_id: str | None = None) -> Any:
        """A KV key's metadata (``GET .../metadata/{key}``, the JSON written with the value), or ``None``
        when the key does not exist or was written without metadata."""
        return self._read_kv("metadata", namespace_id, key, account_id)

    def write_kv_value(
        self,
        namespace_id: str,
        key: str,
        value: str | bytes,
        *,
        metadata: Mapping[str, Any] | None = None,
        account_id: str | None = None,
    ) -> None:
        """Write a KV key's value and metadata in one call (``PUT .../values/{key}``, multipart).

        Value and metadata travel in one request, so they change together or not at all. If the
        outcome is unknown (a dropped connection, a 5xx), the hook reads the key back before sending
        again: a write that landed is not repeated (Cloudflare allows one write per second to a key
        and answers a second one with 429); one that did not is sent again, identical, so nothing
        the metadata recorded (such as the previous value) is lost. A 429 waits ``Retry-After``.

        :param value: the new value (a string is stored as UTF-8).
        :param metadata: JSON-serialisable metadata, at most 1024 bytes serialised (Cloudflare's limit).
        """
        import json as _json

        body = value.encode() if isinstance(value, str) else bytes(value)
        fields: list[tuple[str, Any]] = [("value", body)]
        expected_metadata = None
        if metadata is not None:
            encoded = _json.dumps(dict(metadata), separators=(",", ":"))
            if len(encoded.encode()) > _KV_METADATA_MAX:
                raise CloudflareInputError(
                    f"KV metadata is {len(encoded.encode())} bytes serialised; Cloudflare allows at most "
                    f"{_KV_METADATA_MAX}: store less in it"
                )
            fields.append(("metadata", encoded))
            expected_metadata = _json.loads(encoded)
        path = self._kv_path(namespace_id, "values", key, account_id)
        metadata_path = self._kv_path(namespace_id, "metadata", key, account_id)

        @contextlib.contextmanager
        def multipart() -> Iterator[tuple[IO[bytes], str]]:
            from requests_toolbelt import MultipartEncoder

            encoder = MultipartEncoder(fields=fields)
            yield encoder, encoder.content_type

        def recover() -> dict[str, Any] | None:
            # Single attempts (no retries of their own): they run inside the write's retry budget.
            try:
                stored = self._send("GET", path, raw=True)
                stored_metadata = self._send("GET", metadata_path)
            except AttemptFailed as failed:
                if isinstance(failed.error, CloudflarePermanentAPIError) and kv_key_missing(failed.error):
                    return None
                raise
            if bytes(stored) == body and stored_metadata == expected_metadata:
                self.log.info("KV key %s was written by an earlier attempt; not writing it again", key)
                return {}
            return None

        self._request("PUT", path, upload=multipart, recover=recover)

    def _read_kv(self, kind: str, namespace_id: str, key: str, account_id: str | None) -> Any:
        """``GET .../{kind}/{key}`` (``values``: raw bytes; ``metadata``: the envelope's result); ``None``
        when the key does not exist. Any other 404 (no such namespace) is raised."""
        path = self._kv_path(namespace_id, kind, key, account_id)
        try:
            return self._request("GET", path, raw=kind == "values")
        except CloudflarePermanentAPIError as error:
            if kv_key_missing(error):
                return None
            raise

    def _kv_path(self, namespace_id: str, kind: str, key: str, account_id: str | None) -> str:
        namespace_id, key = _required("namespace_id", namespace_id), _required("key", key)
        if len(key.encode()) > _KV_KEY_MAX or key in (".", ".."):
            raise CloudflareInputError(f"key must be at most {_KV_KEY_MAX} bytes and not '.' or '..', got {key!r}")
        return (
            f"{self._account(account_id)}/storage/kv/namespaces/{quote(namespace_id, safe='')}/{kind}/"
            f"{quote(key, safe='')}"
        )


# -- helpers ----------------------------------------------------------------------------------------


_KV_METADATA_MAX = 1024
_KV_KEY_MAX = 512


def _required(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CloudflareInputError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _flatten(result: Any) -> list[dict[str, Any]]:
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    flat: list[dict[str, Any]] = []
    if isinstance(result, list):
        for item in result:
            flat.extend(_flatten(item))
    return flat


def _opener(
    source: str | os.PathLike[str] | AdapterFile,
) -> tuple[Callable[[], contextlib.AbstractContextManager[BinaryIO]], int]:
    if isinstance(source, AdapterFile):
        return source.open, source.size
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
        except OSError as error:
            raise CloudflareInputError(f"Cannot read upload source {path!r}: {error.strerror}") from None
        return lambda: open(path, "rb"), size
    raise CloudflareInputError(f"source must be a file path or an AdapterFile, got {type(source).__name__}")
