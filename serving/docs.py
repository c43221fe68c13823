"""The API documentation page (Swagger UI) at ``/`` and ``/docs``, with nothing from a third party.

BentoML's own page at ``/`` loads Google Tag Manager, whatever ``BENTOML_DO_NOT_TRACK`` says, and
Swagger UI by default sends the document's address to a public validator. This page loads only
BentoML's bundled Swagger UI files from ``/static_content`` and the document at ``/docs.json``, and
its Content-Security-Policy lets the browser fetch nothing from anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import json

import jinja2
from starlette.responses import HTMLResponse

from serving.product_block import TEMPLATES

__all__ = ["DOCS_PATHS", "docs_page"]

DOCS_PATHS = ("/", "/docs")
STATIC = "/static_content"
OPENAPI = "/docs.json"

_SCRIPT = ("window.onload = function () { var options = " + json.dumps(
    {"url": OPENAPI, "dom_id": "#swagger-ui", "deepLinking": True, "validatorUrl": None, "layout": "BaseLayout"}) +
           "; options.presets = [SwaggerUIBundle.presets.apis]; window.ui = SwaggerUIBundle(options); };")
_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
CSP = ("default-src 'none'; "
       f"script-src 'self' 'sha256-{_HASH}'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HTML = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False).get_template(
    "docs.html.j2").render(static=STATIC, script=_SCRIPT)


def docs_page() -> HTMLResponse:
    return HTMLResponse(_HTML, headers={"content-security-policy": CSP, "x-content-type-options": "nosniff",
                                        "referrer-policy": "no-referrer"})
