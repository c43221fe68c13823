"""The product block of an email: items with formatted prices, UTM links, a reason each, and an
email-safe HTML fragment (tables, inline CSS, alt text, a grey box when an image is missing).

The fragment never contains ``{`` or ``}`` (escaped as HTML entities), so it can be pasted into a
Liquid or Handlebars template without being read as template syntax.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup, escape
from pydantic import BaseModel

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}
TEMPLATES = Path(__file__).with_name("templates")


class BlockItem(BaseModel):
    product_id: str
    name: str
    price: str | None
    image_url: str | None
    link: str
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


@functools.lru_cache(maxsize=100_000)
def with_utm(url: str | None, campaign: str, content: str = "product_block") -> str:
    """``url`` with utm_source / medium / campaign / content set (existing query kept)."""
    if not url:
        return "#"
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | {"utm_source": "sendwise", "utm_medium": "email",
                                            "utm_campaign": campaign, "utm_content": content}
    return urlunsplit(parts._replace(query=urlencode(query)))


def _email_safe(value: object) -> Markup:
    """HTML-escape, and escape braces so no template language reads the fragment as its own."""
    if isinstance(value, Markup):
        return value
    return Markup(str(escape("" if value is None else value)).replace("{", "&#123;").replace("}", "&#125;"))


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, finalize=_email_safe,
                          trim_blocks=True, lstrip_blocks=True)


@functools.lru_cache(maxsize=100_000)
def _cell(width: int, link: str, image_url: str | None, name: str, price: str | None, reason: str) -> Markup:
    """One product's cell; cached, since the same products recur across a campaign's customers."""
    item = {"link": link, "image_url": image_url, "name": name, "price": price, "reason": reason}
    return Markup(_ENV.get_template("product_cell.html.j2").render(width=width, item=item))


_CELLS = "\x00cells\x00"  # stands for the cells while the frame is rendered


@functools.lru_cache(maxsize=1_000)
def _frame(heading: str, columns: int) -> tuple[str, str, str]:
    """The block's table around its cells, rendered once per heading and width: (head, between, tail)."""
    marker, heading = Markup(_CELLS), heading.replace("\x00", "")  # no heading can fake the marker
    html = _ENV.get_template("product_block.html.j2").render(heading=heading, cells=[marker] * columns)
    head, *between, tail = html.split(_CELLS)
    return head, between[0] if between else "", tail


def render_html(heading: str, items: list[BlockItem]) -> str:
    if not items:
        return ""
    width = 100 // len(items)
    head, between, tail = _frame(heading, len(items))
    return head + between.join(_cell(width, i.link, i.image_url, i.name, i.price, i.reason) for i in items) + tail
