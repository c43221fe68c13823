"""Delivery of the trigger outbox to a webhook: signed, in order, retried with backoff.

Each outbox line is POSTed as it is (its raw bytes are the body, ``Content-Type: application/json``)
with the headers

* ``X-Sendwise-Delivery: <id>``: the transition's id, the same at every attempt, and
* ``X-Sendwise-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body with the shared secret.

A 2xx answer is a delivery; anything else (another status, a redirect, a timeout, a refused
connection) is retried after ``min(cap, base * 2**attempt)`` seconds less up to ``jitter`` of it, for as
long as it takes: entries go out in outbox order, so one the receiver refuses holds back those after
it. Transitions with ``"webhook": false`` are skipped.

After each delivery the offset of the next entry is written to the cursor file (atomically,
fsynced), so a restart never resends what was recorded as delivered. A crash between a receiver's 2xx
and that write resends that one entry once: delivery is **at least once**, with an id the receiver
dedupes on (the transitions themselves are never generated twice, see :mod:`serving.outbox`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from features.errors import InputError
from features.io import atomic_write
from serving.outbox import TriggerOutbox, parse_line, read_lines

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sendwise-Signature"
DELIVERY_HEADER = "X-Sendwise-Delivery"


def signature(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256 with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the signature of the raw body and compare in constant time."""
    return hmac.compare_digest(signature(secret, body), header)


def check_webhook(url: str, secret: str | None) -> None:
    """An InputError unless ``url`` is an absolute http(s) URL and ``secret`` is given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"the webhook URL must be an absolute http(s) URL such as https://example.com/hooks; "
                         f"got {url!r}")
    if not secret:
        raise InputError("a webhook URL needs a secret to sign its deliveries with; none was given")


class WebhookSender:
    """A background thread that POSTs the outbox's entries, in order, to ``url``."""

    def __init__(self, url: str, secret: str, outbox: TriggerOutbox, cursor_path: Path | str, *,
                 backoff_base: float = 1.0, backoff_cap: float = 300.0, jitter: float = 0.2,
                 timeout: float = 10.0, poll_interval: float = 1.0, random_state: int | None = None) -> None:
        check_webhook(url, secret)
        if not (backoff_base > 0 and backoff_cap >= backoff_base and 0 <= jitter <= 1):
            raise InputError(f"webhook backoff: base > 0, cap >= base and jitter in [0, 1]; got base "
                             f"{backoff_base}, cap {backoff_cap}, jitter {jitter}")
        self.url, self.secret, self.outbox, self.cursor_path = url, secret, outbox, Path(cursor_path)
        self.backoff_base, self.backoff_cap, self.jitter = backoff_base, backoff_cap, jitter
        self.timeout, self.poll_interval = timeout, poll_interval
        self._rng = random.Random(random_state)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.attempts = 0  # POSTs made, delivered or not

    @property
    def offset(self) -> int:
        """The byte offset in the outbox of the next entry to deliver (0: none delivered yet)."""
        if not self.cursor_path.exists():
            return 0
        return int(json.loads(self.cursor_path.read_text())["offset"])

    def _save(self, offset: int, delivered: str) -> None:
        text = json.dumps({"offset": offset, "last_delivered": delivered})
        atomic_write(self.cursor_path, lambda tmp: Path(tmp).write_text(text))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        full = min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 62))
        return full * (1 - self.jitter * self._rng.random())

    def deliver_pending(self) -> int:
        """Deliver every entry after the cursor (retrying each until it goes or :meth:`stop`); returns
        how many were delivered."""
        delivered = 0
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            for end, line in read_lines(self.outbox.path, self.offset):
                record = parse_line(line)
                if record is not None and record.get("webhook", True):
                    if not self._post(client, line.rstrip(b"\n"), record["id"]):
                        return delivered  # stopped
                    delivered += 1
                self._save(end, record["id"] if record else "")
        return delivered

    def _post(self, client: httpx.Client, body: bytes, delivery: str) -> bool:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body),
                   DELIVERY_HEADER: delivery}
        attempt = 0
        while not self._stop.is_set():
            self.attempts += 1
            try:
                status = client.post(self.url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
                status, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = f"HTTP {status}"
            if status is not None and 200 <= status < 300:
                return True
            wait = self.delay(attempt)
            logger.warning("webhook delivery %s failed (%s); retrying in %.1f s", delivery, why, wait)
            attempt += 1
            self._stop.wait(wait)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_pending()
            except Exception:  # a bug or an unreadable file must not end delivery silently: log, go on
                logger.exception("webhook delivery failed")
            self._stop.wait(self.poll_interval)

    def start(self) -> WebhookSender:
        """Start delivering in a daemon thread; returns self."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sendwise-webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the POST in flight (an entry it was retrying is retried at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
