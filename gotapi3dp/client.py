"""A small GotAPI-1/2 client, as any application would write one (used by `demo` and tests)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests


class GotapiError(Exception):
    """A GotAPI answer with result 1."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"GotAPI error {code}: {message}")
        self.code = code
        self.message = message


@dataclass
class GotapiClient:
    base_url: str
    origin: str = "http://localhost"
    timeout: float = 90.0
    access_token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        """Call /gotapi/<path>; GET/DELETE send a query, POST/PUT a form body."""
        if self.access_token and "accessToken" not in params:
            params["accessToken"] = self.access_token
        url = f"{self.base_url.rstrip('/')}/gotapi/{path.lstrip('/')}"
        # A web origin travels as `Origin` (as a browser sends it); any other name is a
        # native app's, sent as `X-GotAPI-Origin`.
        web = self.origin.startswith(("http://", "https://"))
        headers = {"Origin" if web else "X-GotAPI-Origin": self.origin}
        if method in ("GET", "DELETE"):
            resp = self.session.request(method, url, params=params, headers=headers, timeout=self.timeout)
        else:
            resp = self.session.request(method, url, data=params, headers=headers, timeout=self.timeout)
        body = resp.json()
        if body.get("result") != 0:
            raise GotapiError(int(body.get("errorCode", 1)), str(body.get("errorMessage", "")))
        return body

    def authorize(self, application_name: str, scopes: list[str]) -> str:
        """GotAPI-2: grant a clientId, then an accessToken for the scopes."""
        client_id = self.request("GET", "authorization/grant")["clientId"]
        answer = self.request("GET", "authorization/accessToken", clientId=client_id,
                              scope=",".join(scopes), applicationName=application_name)
        self.access_token = answer["accessToken"]
        return self.access_token
