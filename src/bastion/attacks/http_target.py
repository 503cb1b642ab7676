"""A remote model behind HTTP as a query target (httpx).

Mapping (also the body of Bastion's own gateway, ``POST /v1/predict``):

- request: ``POST url`` with JSON ``{"inputs": [x_1, ..., x_B]}`` (``body="object"``, the
  default) or the bare JSON list ``[x_1, ..., x_B]`` (``body="list"``), each ``x_i`` a
  nested list of floats with the sample shape ((D,) rows for tabular models, (C, H, W) for
  images); header ``Authorization: Bearer <api_key>`` when a key is given.
- answer 200: JSON ``{"predictions": [int, ...], "probabilities": [[float, ...], ...]}``
  (other keys are ignored), or a bare JSON list: rows of probabilities, or one integer
  label per input. ``kind="scores"`` needs probabilities; ``kind="labels"`` uses the labels
  (or the argmax of the probabilities).
- answer 202: the request was held (for human review), or 403 whose ``detail`` names the
  input guard (the gateway blocked it): every input counts as a refused query (NaN scores /
  label -1), see :mod:`bastion.attacks.targets`. Any other 401/403 is a key problem.
- 429: wait ``Retry-After`` seconds (or the backoff) and retry; 5xx, timeouts and
  connection errors: retry with exponential backoff; other 4xx: :class:`TargetError` at once.

An answer that is not JSON, has the wrong shape, or holds NaN, Inf or scores that are not
probabilities raises :class:`~bastion.errors.TargetError` naming the problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import torch

from bastion.attacks.targets import REFUSED, BaseTarget
from bastion.errors import AttackError, TargetError

log = logging.getLogger(__name__)
RETRY_STATUS = {500, 502, 503, 504}


class HttpTarget(BaseTarget):
    """Query a model served over HTTP (see the module docstring for the JSON mapping).

    ``num_classes`` may be left out for a ``scores`` target: the first answer tells it.
    ``retries`` is the number of extra attempts after the first; the wait before retry ``k``
    is ``backoff · 2^k`` seconds, capped at ``max_backoff``; on 429 it is the ``Retry-After``
    the server asks for (up to ``max_retry_after``, beyond which the target gives up)."""

    def __init__(
        self,
        url: str,
        *,
        kind: str = "scores",
        num_classes: int | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        batch_size: int = 64,
        headers: dict[str, str] | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        body: str = "object",
    ) -> None:
        super().__init__(kind=kind, num_classes=num_classes, batch_size=batch_size)
        if body not in ("object", "list"):
            raise AttackError(f"body must be 'object' or 'list', got {body!r}")
        self.body = body
        if not url.startswith(("http://", "https://")):
            raise AttackError(f"target URL must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise AttackError("timeout must be > 0, retries and backoff >= 0")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._client = client
        self._own_client = client is None
        self._sleep = sleep

    def _infer_num_classes(self) -> int:
        if self.kind == "labels":
            raise TargetError("a labels-only HttpTarget needs num_classes=")
        raise TargetError("HttpTarget learns num_classes from its first answer: query it first")

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None and self._own_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, attempt: int, retry_after: str | None = None) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        if retry_after is None:
            return delay
        try:
            asked = max(0.0, float(retry_after))
        except ValueError:
            return delay  # an HTTP date: keep the backoff
        if asked > self.max_retry_after:
            raise TargetError(
                f"{self.url} is rate limiting (HTTP 429) and asks to wait {asked:g} s, more than "
                f"max_retry_after={self.max_retry_after:g}: try later or raise max_retry_after"
            )
        return asked

    def _post(self, body: dict[str, Any] | list[Any]) -> httpx.Response | None:
        """POST with retries; ``None`` means the request was refused (held or blocked)."""
        last = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                resp = self.client.post(
                    self.url, json=body, headers=self.headers, timeout=self.timeout
                )
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                status = resp.status_code
                if status == 200:
                    return resp
                if status == 202:
                    return None
                if status == 429:
                    last = "rate limited (HTTP 429)"
                    retry_after = resp.headers.get("Retry-After")
                elif status in RETRY_STATUS:
                    last = f"server error HTTP {status}"
                elif status == 403 and _guard_refusal(resp):
                    return None
                elif status in (401, 403):
                    raise TargetError(
                        f"{self.url} refused the request (HTTP {status}): pass a valid api_key"
                    )
                else:
                    raise TargetError(f"{self.url} answered HTTP {status}: {_excerpt(resp.text)}")
            if attempt < self.retries:
                delay = self._wait(attempt, retry_after)
                log.info("%s: %s; retry %d in %.2f s", self.url, last, attempt + 1, delay)
                self._sleep(delay)
        raise TargetError(f"{self.url} failed after {self.retries + 1} attempt(s): {last}")

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = x.detach().cpu().float().tolist()
        resp = self._post(rows if self.body == "list" else {"inputs": rows})
        if resp is None:
            if self.kind == "labels":
                return torch.full((n,), REFUSED, dtype=torch.long)
            return torch.full((n, self.num_classes), float("nan"))
        return self._parse(resp, n)

    def _parse(self, resp: httpx.Response, n: int) -> torch.Tensor:
        try:
            data = resp.json()
        except ValueError:
            raise TargetError(f"{self.url} answered non-JSON: {_excerpt(resp.text)}") from None
        if isinstance(data, list):
            is_rows = bool(data) and all(isinstance(r, list) for r in data)
            data = {"probabilities": data} if is_rows else {"predictions": data}
        if not isinstance(data, dict):
            raise TargetError(
                f"{self.url} answered a JSON {type(data).__name__}, expected an object or a list"
            )
        probs = data.get("probabilities")
        if probs is not None:
            return _check_probabilities(probs, n, self.url)
        if self.kind == "scores":
            raise TargetError(
                f"{self.url} answered no 'probabilities' (labels only?): use kind='labels'"
            )
        preds = data.get("predictions")
        if not isinstance(preds, list) or len(preds) != n:
            raise TargetError(f"{self.url}: 'predictions' must be a list of {n} integers")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in preds):
            raise TargetError(
                f"{self.url}: 'predictions' must hold integers, got {_excerpt(str(preds))}"
            )
        labels = torch.tensor(preds, dtype=torch.long)
        if self._num_classes is not None and (
            labels.min() < 0 or labels.max() >= self._num_classes
        ):
            raise TargetError(f"{self.url}: a prediction lies outside [0, {self._num_classes - 1}]")
        return labels


def _check_probabilities(probs: Any, n: int, url: str) -> torch.Tensor:
    if not isinstance(probs, list) or len(probs) != n:
        raise TargetError(f"{url}: 'probabilities' must be a list of {n} rows")
    try:
        out = torch.tensor(probs, dtype=torch.float32)
    except (TypeError, ValueError):
        raise TargetError(
            f"{url}: 'probabilities' must be rows of numbers of equal length"
        ) from None
    if out.ndim != 2 or out.shape[1] < 2:
        raise TargetError(
            f"{url}: 'probabilities' has shape {tuple(out.shape)}, expected ({n}, classes)"
        )
    if not torch.isfinite(out).all():
        raise TargetError(f"{url}: 'probabilities' contains NaN or Inf")
    sums = out.sum(1)
    if (
        (out < -1e-4).any()
        or (out > 1 + 1e-4).any()
        or not torch.allclose(sums, torch.ones_like(sums), atol=1e-2)
    ):
        raise TargetError(f"{url}: 'probabilities' rows are not distributions (each must sum to 1)")
    return out


def _guard_refusal(resp: httpx.Response) -> bool:
    """A 403 that refuses the request by policy rather than the key: an input guard's
    ("refused by the input guard") or Bastion's gateway blocking the client ("blocked by
    policy", with ``blocked_until``)."""
    try:
        body = resp.json()
        detail = body.get("detail", "")
    except (ValueError, AttributeError):
        return False
    if "blocked_until" in body:
        return True
    text = detail.lower() if isinstance(detail, str) else ""
    return "guard" in text or "blocked by policy" in text


def _excerpt(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text[:limit] + ("…" if len(text) > limit else "")) if text else "(empty body)"
