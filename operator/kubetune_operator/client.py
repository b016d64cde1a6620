"""A small async Kubernetes client on kopf's own credentials and aiohttp (what kopf itself uses), so the operator
needs neither the `kubernetes` package (most of a Python operator's memory) nor its own auth code. Children are
written with server-side apply: idempotent, so a restarted operator re-applies instead of duplicating."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

PLURALS = {"ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts", "Service": "services", "Secret": "secrets",
           "Role": "roles", "RoleBinding": "rolebindings", "Job": "jobs", "Deployment": "deployments",
           "HorizontalPodAutoscaler": "horizontalpodautoscalers", "PodDisruptionBudget": "poddisruptionbudgets",
           "Pod": "pods", "Event": "events", "FineTuneJob": "finetunejobs", "ConvertJob": "convertjobs",
           "ChatEndpoint": "chatendpoints", "Workload": "workloads", "PersistentVolumeClaim": "persistentvolumeclaims",
           "NetworkPolicy": "networkpolicies"}


class ApiError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"{status}: {body[:500]}")
        self.status = status
        try:  # a metav1.Status: its message is what the apiserver (or an admission webhook) said
            self.message = said(json.loads(body))[:1000]
        except (ValueError, AttributeError):
            self.message = body[:1000]

    @property
    def refused(self) -> bool:
        """The object itself was refused (invalid, or denied by an admission webhook), not the request failing."""
        return self.status == 422 or (self.status in (400, 403) and "admission webhook" in self.message)


def said(status: dict) -> str:
    """A metav1.Status in a line: per field, the apiserver's verdict without the rejected value it repeats (an
    immutable pod template is dumped whole, kilobytes long)."""
    message = str(status.get("message") or status)
    causes = (status.get("details") or {}).get("causes") or []
    if not causes:
        return message
    verdicts = [f"{c.get('field', '')}: {str(c.get('message', '')).rpartition(': ')[2]}"
                if str(c.get("message", "")).startswith("Invalid value") else f"{c.get('field', '')}: {c.get('message')}"
                for c in causes]
    return f"{message.split(': ', 1)[0]}: {'; '.join(verdicts)}"


class NotOwned(Exception):
    """A child's name is taken by an object this resource does not own."""

    def __init__(self, kind: str, name: str):
        super().__init__(f"{kind} {name} already exists and is not owned by this resource; the operator will not "
                         f"overwrite or adopt it (rename the resource, or delete that {kind} if it is stale)")
        self.kind, self.name = kind, name


def path(api_version: str, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


class Kube:
    def __init__(self, info: Any, field_manager: str):
        self.info, self.field_manager = info, field_manager
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0

    def _ssl(self) -> Any:
        if self.info.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self.info.ca_path, cadata=self.info.ca_data.decode()
                                         if isinstance(self.info.ca_data, bytes) else self.info.ca_data)
        if self.info.certificate_path or self.info.certificate_data:
            ctx.load_cert_chain(self.info.certificate_path, self.info.private_key_path)
        return ctx

    async def _request(self, method: str, url: str, body: Any = None, content_type: str = "application/json",
                       params: dict | None = None) -> Any:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.info.token}"} if self.info.token else {}
            self._session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=self._ssl()),
                                                  timeout=aiohttp.ClientTimeout(total=60))
        self.requests += 1
        data = json.dumps(body) if body is not None else None
        async with self._session.request(method, self.info.server.rstrip("/") + url, data=data, params=params,
                                         headers={"Content-Type": content_type}) as response:
            text = await response.text()
            if response.status == 404 and method in ("GET", "DELETE"):
                return None
            if response.status >= 400:
                raise ApiError(response.status, text)
            return json.loads(text) if text else None

    async def apply(self, manifest: dict, initial: dict | None = None) -> dict:
        """Server-side apply, forced (the operator owns its children's fields), but never onto an object that exists
        without this manifest's owner: a child name matching a user's Role or ConfigMap must not rewrite it, nor
        adopt it for the garbage collector (a confused deputy). `initial` is merged into the object only when it is
        created (a plain create): fields another controller takes over afterwards, which no apply then claims."""
        m = manifest["metadata"]
        owners = {o["uid"] for o in m.get("ownerReferences", ())}
        if owners or initial:
            current = await self.get(manifest["apiVersion"], manifest["kind"], m["namespace"], m["name"])
            theirs = {o.get("uid") for o in ((current or {}).get("metadata") or {}).get("ownerReferences", ())}
            if current is not None and owners and not owners & theirs:
                raise NotOwned(manifest["kind"], m["name"])
            if current is None and initial:
                try:
                    return await self._request("POST", path(manifest["apiVersion"], manifest["kind"], m["namespace"]),
                                               _merged(manifest, initial), params={"fieldManager": self.field_manager})
                except ApiError as exc:
                    if exc.status != 409:  # created meanwhile: apply onto it like any existing object
                        raise
        return await self._request("PATCH", path(manifest["apiVersion"], manifest["kind"], m["namespace"], m["name"]),
                                   manifest, "application/apply-patch+yaml",
                                   {"fieldManager": self.field_manager, "force": "true"})

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        return await self._request("GET", path(api_version, kind, namespace, name))

    async def list(self, api_version: str, kind: str, namespace: str, selector: str | None = None,
                   fields: str | None = None) -> list[dict]:
        params = {k: v for k, v in (("labelSelector", selector), ("fieldSelector", fields)) if v}
        got = await self._request("GET", path(api_version, kind, namespace), params=params or None)
        return (got or {}).get("items", [])

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        # Background: the call returns at once and the garbage collector removes the pods.
        await self._request("DELETE", path(api_version, kind, namespace, name),
                            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict) -> None:
        await self._request("PATCH", path(api_version, kind, namespace, name, "status"), {"status": status},
                            "application/merge-patch+json")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class Connection:
    """The operator's one connection pool: credentials from kopf's login handler, the client built on first use and
    closed at cleanup. It lives in kopf's operator memo; each resource's memo is a shallow copy of that, so every
    handler reaches this same object."""

    def __init__(self) -> None:
        self.info: Any = None
        self._kube: Kube | None = None

    def kube(self, field_manager: str) -> Kube:
        if self._kube is None:
            self._kube = Kube(self.info, field_manager)
        return self._kube

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
