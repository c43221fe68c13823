"""Which links may reach an email: absolute http(s) URLs only.

A catalog is data a shop brings (an export, a feed, a supplier's file); a ``url`` of
``javascript:...``, ``data:text/html,...`` or ``//host/x`` placed in an email or its "view in
browser" page runs or loads whatever it names. :func:`safe_http_url` is the one check: after
removing whitespace at the ends and every control character (browsers drop tabs and newlines
inside a URL, so ``java\\tscript:`` is ``javascript:`` to them), the value must be
``http://HOST...`` or ``https://HOST...`` (any case); anything else is no link.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

__all__ = ["safe_http_url", "strip_controls"]

# C0 controls, DEL and C1 controls: never part of a link or a line of text in an email.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_SCHEMES = ("http", "https")


def strip_controls(value: str) -> str:
    """``value`` without C0/C1 control characters (tabs and newlines included)."""
    return _CONTROLS.sub("", value)


def safe_http_url(value: object) -> str | None:
    """``value`` as an absolute http(s) URL, or None when it is anything else.

    >>> safe_http_url("  HTTPS://shop.example/p/1?size=M&size=L ")
    'https://shop.example/p/1?size=M&size=L'
    >>> safe_http_url("java\\tscript:alert(1)//") is None, safe_http_url("//evil.example/x") is None
    (True, True)

    Whitespace at the ends and control characters anywhere are removed (as a browser would),
    spaces inside become ``%20``; the scheme is lower-cased. The host must be present and hold no
    backslash (``https:\\\\host`` and ``https://\\\\host`` mean other hosts to different parsers).
    """
    return _safe_text_url(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=100_000)  # a catalog's links recur in every block
def _safe_text_url(value: str) -> str | None:
    url = strip_controls(value).strip()
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in _SCHEMES or not rest.startswith("//"):
        return None
    url = f"{scheme.lower()}:{rest}".replace(" ", "%20")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if not host or "\\" in parts.netloc:
        return None
    return url
