"""The admin side of the fleet API, for the CLI, tests and `federate --publish`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgewise.bundle.archive import pack
from edgewise.errors import FleetError


class FleetClient:
    """`http`: an httpx-style client to send through instead of urllib (tests talk to the app in-process)."""

    def __init__(self, server: str, token: str, timeout_s: float = 60.0, http: Any = None) -> None:
        self.server, self.token, self.timeout_s, self.http = server.rstrip("/"), token, timeout_s, http

    def _req(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": ctype}
        if self.http is not None:
            r = self.http.request(method, self.server + path, content=body, headers=headers)
            if r.status_code >= 400:
                try:
                    msg = r.json().get("error") or r.reason_phrase
                except ValueError:
                    msg = r.reason_phrase
                raise FleetError(f"fleet server refused {method} {path}: {r.status_code} {msg}")
            return r.json()
        req = urllib.request.Request(self.server + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                msg = e.reason
            raise FleetError(f"fleet server refused {method} {path}: {e.code} {msg}") from e
        except (urllib.error.URLError, OSError) as e:
            raise FleetError(f"cannot reach the fleet server at {self.server}: {getattr(e, 'reason', e)}") from e

    def _json(self, method: str, path: str, data: Any) -> Any:
        return self._req(method, path, json.dumps(data).encode())

    def upload(self, bundle: Path) -> dict[str, Any]:
        return self._req("POST", "/v1/admin/models", pack(bundle), "application/x-tar")

    def models(self) -> list[dict[str, Any]]:
        return self._req("GET", "/v1/admin/models")

    def enroll_token(self, tags: list[str], ttl_s: float = 86400) -> str:
        return self._json("POST", "/v1/admin/enroll-tokens", {"tags": tags, "ttl_s": ttl_s})["token"]

    def enroll_tokens(self, tags: list[str], count: int, ttl_s: float = 86400) -> list[str]:
        return self._json("POST", "/v1/admin/enroll-tokens", {"tags": tags, "ttl_s": ttl_s, "count": count})["tokens"]

    def devices(self, tag: str | None = None) -> list[dict[str, Any]]:
        return self._req("GET", "/v1/admin/devices" + (f"?tag={tag}" if tag else ""))

    def rollout(self, model: str, version: str, selector: str, waves: list[float], gate: dict | None = None,
                auto_rollback: bool = True) -> dict[str, Any]:
        return self._json("POST", "/v1/admin/rollouts", {"model": model, "version": version, "selector": selector,
                                                         "waves": waves, "gate": gate, "auto_rollback": auto_rollback})

    def rollouts(self) -> list[dict[str, Any]]:
        return self._req("GET", "/v1/admin/rollouts")

    def get_rollout(self, rid: str) -> dict[str, Any]:
        return self._req("GET", f"/v1/admin/rollouts/{rid}")

    def control(self, rid: str, action: str) -> dict[str, Any]:
        return self._req("POST", f"/v1/admin/rollouts/{rid}/{action}")
