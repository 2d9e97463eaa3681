"""A keep-alive HTTP connection for load generation (reconnects on failure)."""

from __future__ import annotations

import http.client
import json
import urllib.parse

from .. import protocol as P


class KeepAlive:
    def __init__(self, url: str, timeout: float = 10.0):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None, ctype: str) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": ctype} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, obj: dict) -> tuple[int, dict]:
        st, data = self._request("POST", path, P.pack(obj), P.CONTENT_TYPE)
        try:
            return st, P.unpack(data)
        except Exception:
            return st, {}

    def post_json(self, path: str, obj: dict) -> tuple[int, bytes]:
        return self._request("POST", path, json.dumps(obj).encode(), "application/json")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
