"""The product block of an email: items with formatted prices, UTM links, a reason each, and an
email-safe HTML fragment (tables, inline CSS, alt text, a grey box when an image is missing).

The fragment never contains ``{`` or ``}`` (escaped as HTML entities), so it can be pasted into a
Liquid or Handlebars template without being read as template syntax, nor a control character (a NUL
in a product name stops Handlebars compiling the whole email). A link or image is an absolute
http(s) URL or absent (:func:`features.links.safe_http_url`): a cell without a link is not wrapped
in ``<a>``, and one without an image shows the grey box with the name.

What a shop chooses for its blocks (currency, ``utm_source``, ``utm_medium``) travels as one
:class:`BlockSettings`; a product without a safe link of its own gets one from the shop's link
template (:func:`product_link`, applied as the catalog is loaded by :func:`serving.state.safe_catalog`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_plus, urlencode, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup, escape
from pydantic import BaseModel, Field

from features.links import safe_http_url, strip_controls

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}
TEMPLATES = Path(__file__).with_name("templates")


class BlockItem(BaseModel):
    product_id: str
    name: str
    price: str | None
    image_url: str | None = Field(description="absolute http(s) URL, or null: show the name instead")
    link: str | None = Field(description="absolute http(s) URL with UTM parameters, or null: no link")
    reason: str


class ProductBlock(BaseModel):
    customer_id: str
    known: bool
    heading: str
    items: list[BlockItem]
    html: str
    model_version: str


def format_price(value: float | None, currency: str) -> str | None:
    if value is None:
        return None
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    return f"{symbol}{value:,.2f}" if symbol else f"{value:,.2f} {currency.upper()}"


_LINE_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]+")


def clean_text(value: object) -> str:
    """``value`` as one line of text for a block: tabs and line breaks (Unicode's too) become a
    space, every other C0/C1 control character is removed."""
    return strip_controls(_LINE_BREAKS.sub(" ", "" if value is None else str(value)))


UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content")
UTM_SOURCE, UTM_MEDIUM = "sendwise", "email"  # unless the shop sets its own (SENDWISE_UTM_SOURCE / _MEDIUM)


@dataclass(frozen=True)
class BlockSettings:
    """What a shop chose for its product blocks: the currency of its prices, and the ``utm_source``
    and ``utm_medium`` of every link (:attr:`serving.config.ServeConfig.block_settings`)."""

    currency: str = "GBP"
    utm_source: str = UTM_SOURCE
    utm_medium: str = UTM_MEDIUM


@functools.lru_cache(maxsize=100_000)
def with_utm(url: str | None, campaign: str, content: str = "product_block", source: str = UTM_SOURCE,
             medium: str = UTM_MEDIUM) -> str | None:
    """``url`` with utm_source / medium / campaign / content set, or None when ``url`` is not an
    absolute http(s) URL. The rest of the query stays as it was, byte for byte (repeated and empty
    parameters included); only those four keys are replaced."""
    safe = safe_http_url(url)
    if safe is None:
        return None
    parts = urlsplit(safe)
    kept = [p for p in parts.query.split("&") if p and unquote_plus(p.partition("=")[0]) not in UTM_KEYS]
    ours = urlencode({"utm_source": source, "utm_medium": medium, "utm_campaign": campaign, "utm_content": content})
    return urlunsplit(parts._replace(query="&".join([*kept, ours])))


PRODUCT_ID_FIELD = "{product_id}"
PRODUCT_URL_EXAMPLE = "https://shop.example/products/{product_id}"


def check_product_url(template: str) -> str:
    """``template`` as product links are made from it (cleaned as :func:`features.links.safe_http_url`
    cleans a link): an absolute http(s) URL holding ``{product_id}`` in its path, query or fragment,
    and no other ``{...}``; else a ValueError saying what is expected."""
    expected = (f"expected an absolute http(s) URL with {PRODUCT_ID_FIELD} where a product's id goes, "
                f"such as {PRODUCT_URL_EXAMPLE}; got {template!r}")
    safe = safe_http_url(template)
    if safe is None:
        raise ValueError(f"not an absolute http(s) URL: {expected}")
    if PRODUCT_ID_FIELD not in safe:
        raise ValueError(f"no {PRODUCT_ID_FIELD} in the template: {expected}")
    rest = safe.replace(PRODUCT_ID_FIELD, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"only {PRODUCT_ID_FIELD} may be written between braces: {expected}")
    if PRODUCT_ID_FIELD in urlsplit(safe).netloc:
        raise ValueError(f"{PRODUCT_ID_FIELD} goes in the path or query, not in the host (a product's id "
                         f"must not choose the site): {expected}")
    return safe


def product_link(template: str, product_id: object) -> str | None:
    """The link of ``product_id`` from a template :func:`check_product_url` accepted: ``{product_id}``
    replaced by the id percent-encoded (all but letters, digits and ``_.-~``), so no id can leave its
    place (``../x?y#z`` stays one path segment) or the HTML attribute (``"><script>``). None for an
    empty id and for ``.`` and ``..``, which a browser resolves as the current or parent path (and
    ``%2E%2E`` too, so encoding cannot save them)."""
    text = "" if product_id is None else str(product_id)
    if text in ("", ".", ".."):
        return None
    return safe_http_url(template.replace(PRODUCT_ID_FIELD, quote(text, safe="")))


def _email_safe(value: object) -> Markup:
    """Remove control characters, HTML-escape, and escape braces so no template language reads the
    fragment as its own."""
    if isinstance(value, Markup):
        return value
    return Markup(str(escape(clean_text(value))).replace("{", "&#123;").replace("}", "&#125;"))


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, finalize=_email_safe,
                          trim_blocks=True, lstrip_blocks=True)


@functools.lru_cache(maxsize=100_000)
def _cell(width: int, link: str | None, image_url: str | None, name: str, price: str | None, reason: str) -> Markup:
    """One product's cell; cached, since the same products recur across a campaign's customers."""
    item = {"link": link, "image_url": image_url, "name": name, "price": price, "reason": reason}
    return Markup(_ENV.get_template("product_cell.html.j2").render(width=width, item=item))


_CELLS = "\x00cells\x00"  # stands for the cells while the frame is rendered


@functools.lru_cache(maxsize=1_000)
def _frame(heading: str, columns: int) -> tuple[str, str, str]:
    """The block's table around its cells, rendered once per heading and width: (head, between, tail)."""
    marker, heading = Markup(_CELLS), clean_text(heading)  # no NUL: no heading can fake the marker
    html = _ENV.get_template("product_block.html.j2").render(heading=heading, cells=[marker] * columns)
    head, *between, tail = html.split(_CELLS)
    return head, between[0] if between else "", tail


def render_html(heading: str, items: list[BlockItem]) -> str:
    if not items:
        return ""
    width = 100 // len(items)
    head, between, tail = _frame(heading, len(items))
    return head + between.join(_cell(width, i.link, i.image_url, i.name, i.price, i.reason) for i in items) + tail
