"""The SDK's view of the control plane API (typed wrappers over the wire protocol)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from crucible.errors import Error
from crucible.protocol.apps import AppInfo, FunctionCreate, FunctionInfo
from crucible.protocol.calls import CallInfo, CallsCreate, CallsCreated, GroupResults
from crucible.protocol.classes import ClassPoolCreate
from crucible.protocol.common import Payload
from crucible.protocol.deployments import DeploymentInfo, VersionStarted
from crucible.protocol.transport import Transport, url_part
from crucible.sdk._config import read_client_config
from crucible.settings import Settings, load_settings

__all__ = ["Client"]


class Client:
    # A function's container's own connection (its container token): shared objects of its
    # account and the functions of its own app, not the builder's routes (apps, deployments,
    # functions by deployment name).
    container = False

    def __init__(self, server_url: str, token: str) -> None:
        self.server_url = server_url
        self.transport = Transport(server_url, token, user_agent="crucible-sdk")

    def builder_only(self, what: str, why: str) -> None:
        """Refuse ``what`` on a container's own connection with ``why`` and what to do
        (the server's refusal named only the token: "create one with crucible token create")."""
        if self.container:
            raise Error(f"{what} inside a function's container: {why}")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        settings = settings or load_settings()
        config = read_client_config(settings)
        if config is None and os.environ.get("CRUCIBLE_CONTAINER_TOKEN"):
            return cls.in_container()
        if config is None:
            raise Error(
                "no Crucible exchange is configured: run `crucible up` to start one on this "
                "machine, or set CRUCIBLE_SERVER_URL and CRUCIBLE_TOKEN"
            )
        return cls(config.server_url, config.token)

    @classmethod
    def in_container(cls) -> Client:
        """Inside a container: the worker's own connection to the exchange (its container
        token: shared objects of its account such as dicts and queues, blobs, and the
        functions of its own app and the calls it made; not the builder routes)."""
        client = cls.__new__(cls)
        client.container = True
        client.server_url = os.environ["CRUCIBLE_SERVER_URL"]
        client.transport = Transport(
            client.server_url,
            os.environ["CRUCIBLE_CONTAINER_TOKEN"],
            user_agent="crucible-sdk",
            unix_socket=os.environ.get("CRUCIBLE_SERVER_SOCKET") or None,
        )
        return client

    def close(self) -> None:
        self.transport.close()

    # -- blobs --------------------------------------------------------------------------------
    def upload_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        status, _ = self.transport.request_raw("HEAD", f"/v1/blobs/{sha}")
        if status != 200:
            status, body = self.transport.request_raw(
                "PUT", f"/v1/blobs/{sha}", data, content_type="application/octet-stream"
            )
            Transport._decode(status, body)
        return sha

    def download_blob(self, sha: str) -> bytes:
        status, body = self.transport.request_raw("GET", f"/v1/blobs/{sha}")
        if status != 200:
            Transport._decode(status, body)
        return body

    def payload_bytes(self, payload: Payload) -> bytes:
        return self.download_blob(payload.ref) if payload.ref else payload.raw()

    # -- apps ---------------------------------------------------------------------------------
    def create_app(self, name: str, *, ephemeral: bool = True) -> AppInfo:
        return AppInfo.model_validate(
            self.transport.post("/v1/apps", {"name": name, "ephemeral": ephemeral})
        )

    def heartbeat_app(self, app_id: str) -> AppInfo:
        return AppInfo.model_validate(self.transport.post(f"/v1/apps/{url_part(app_id)}/heartbeat"))

    def stop_app(self, app_id: str) -> AppInfo:
        return AppInfo.model_validate(self.transport.post(f"/v1/apps/{url_part(app_id)}/stop"))

    def get_app(self, app_id: str) -> AppInfo:
        return AppInfo.model_validate(self.transport.get(f"/v1/apps/{url_part(app_id)}"))

    def list_apps(self) -> list[AppInfo]:
        return [AppInfo.model_validate(a) for a in self.transport.get("/v1/apps")]

    def create_functions(self, app_id: str, specs: list[FunctionCreate]) -> list[FunctionInfo]:
        body = {"functions": [s.model_dump(mode="json") for s in specs]}
        data = self.transport.post(f"/v1/apps/{app_id}/functions", body)
        return [FunctionInfo.model_validate(f) for f in data]

    # -- deployments --------------------------------------------------------------------------
    def start_version(self, name: str) -> VersionStarted:
        return VersionStarted.model_validate(self.transport.post("/v1/deployments", {"name": name}))

    def activate(self, name: str, app_id: str) -> DeploymentInfo:
        data = self.transport.post(f"/v1/deployments/{url_part(name)}/activate", {"app_id": app_id})
        return DeploymentInfo.model_validate(data)

    def lookup_function(self, deployment: str, function: str) -> FunctionInfo:
        data = self.transport.get(
            f"/v1/deployments/{url_part(deployment)}/functions/{url_part(function)}"
        )
        return FunctionInfo.model_validate(data)

    def class_pool(self, deployment: str, cls: str, params: dict[str, Any]) -> FunctionInfo:
        """The function of the pool of ``cls(**params)`` in the deployment's current version,
        made from the deployed class when it is the first call of these parameters."""
        data = self.transport.post(
            f"/v1/deployments/{url_part(deployment)}/functions/{url_part(cls)}/pools",
            ClassPoolCreate(params=params).model_dump(),
        )
        return FunctionInfo.model_validate(data)

    def app_function(self, app_id: str, name: str) -> FunctionInfo:
        """The function ``name`` of the app ``app_id`` (a container: of its own app only)."""
        data = self.transport.get(f"/v1/apps/{url_part(app_id)}/functions/{url_part(name)}")
        return FunctionInfo.model_validate(data)

    def app_class_pool(self, app_id: str, cls: str, params: dict[str, Any]) -> FunctionInfo:
        """The function of the pool of ``cls(**params)`` in the app ``app_id``, made from
        the class's function when it is the first call of these parameters."""
        data = self.transport.post(
            f"/v1/apps/{url_part(app_id)}/functions/{url_part(cls)}/pools",
            ClassPoolCreate(params=params).model_dump(),
        )
        return FunctionInfo.model_validate(data)

    # -- calls --------------------------------------------------------------------------------
    def create_calls(self, function_id: str, req: CallsCreate) -> CallsCreated:
        data = self.transport.post(
            f"/v1/functions/{function_id}/calls",
            req.model_dump(mode="json", exclude_none=True),
            timeout_s=req.wait_s + 30,
            # Rate limited: resubmit after Retry-After only when a repeat cannot run an
            # input twice: every input has an idempotency key, or a map batch's first one
            # has (the server then answers with the calls it made for the batch).
            retry_rate_limited=all(i.idempotency_key for i in req.inputs)
            or (req.group_id is not None and bool(req.inputs[0].idempotency_key)),
        )
        return CallsCreated.model_validate(data)

    def get_call(self, call_id: str, wait_s: float = 0.0) -> CallInfo:
        data = self.transport.get(
            f"/v1/calls/{url_part(call_id)}?wait_s={wait_s:g}", timeout_s=wait_s + 30
        )
        return CallInfo.model_validate(data)

    def cancel_call(self, call_id: str) -> CallInfo:
        return CallInfo.model_validate(self.transport.post(f"/v1/calls/{url_part(call_id)}/cancel"))

    def group_results(
        self, group_id: str, *, wait_s: float, limit: int = 5000, indices: list[int] | None = None
    ) -> GroupResults:
        body: dict[str, Any] = {"wait_s": wait_s, "limit": limit}
        if indices is not None:
            body["indices"] = indices
        data = self.transport.post(f"/v1/groups/{group_id}/results", body, timeout_s=wait_s + 30)
        return GroupResults.model_validate(data)

    def list_calls(self, **params: Any) -> list[CallInfo]:
        query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        data = self.transport.get("/v1/calls" + (f"?{query}" if query else ""))
        return [CallInfo.model_validate(c) for c in data["calls"]]

    # -- other --------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return self.transport.get(path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.transport.post(path, body)
