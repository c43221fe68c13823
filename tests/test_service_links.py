"""What may reach an email, as pure functions: links (absolute http(s) only, UTM parameters added
without touching the rest of the query) and text (no control character in a block or its HTML)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

import pytest

from features.links import safe_http_url
from serving.product_block import BlockItem, clean_text, render_html, with_utm

# (value, what a browser would make of it): every one of these must come out as no link.
UNSAFE = [
    "javascript:alert(1)//", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "java\nscript:alert(1)",
    "java\rscript:alert(1)", "  javascript:alert(1)", "\x00javascript:alert(1)", "\x01\x1f javascript:alert(1)",
    "\u0085javascript:alert(1)", "javascript\x00:alert(1)", "j\x00avascript:alert(1)",
    "javascript://https://shop.example/%0Aalert(1)", "vbscript:msgbox(1)", "VBScript:msgbox(1)",
    "data:text/html,<script>alert(1)</script>", "DATA:text/html;base64,PHNjcmlwdD4=", " data:image/svg+xml,<svg/>",
    "//evil.example/x", "  //evil.example/x", "\t//evil.example/x", "///evil.example", "\\\\evil.example\\x",
    "/relative/path", "relative/path", "?q=1", "#top", "mailto:a@b.example", "ftp://files.example/x",
    "file:///etc/passwd", "https:evil.example", "https:/evil.example", "http://", "https://", "https:///x",
    "https:\\\\evil.example", "https://\\evil.example", "http://[::1", "jav&#x09;ascript:alert(1)",
    "%6Aavascript:alert(1)", "\u200bjavascript:alert(1)", "blob:https://shop.example/1", "", "   ", "\x00",
]
# (value, the link it becomes)
SAFE = [
    ("https://shop.example/p/1", "https://shop.example/p/1"),
    ("  https://shop.example/p/1  ", "https://shop.example/p/1"),
    ("HTTPS://Shop.example/P/1", "https://Shop.example/P/1"),
    ("HtTp://shop.example", "http://shop.example"),
    ("\x00https://shop.example/p/1\n", "https://shop.example/p/1"),
    ("https://shop.ex\tample/p/\r\n1", "https://shop.example/p/1"),
    ("https://shop.example/a b", "https://shop.example/a%20b"),
    ("https://shop.example/p?size=M&size=L&gift=", "https://shop.example/p?size=M&size=L&gift="),
    ("http://127.0.0.1:8080/x#frag", "http://127.0.0.1:8080/x#frag"),
]


@pytest.mark.parametrize("value", UNSAFE)
def test_only_absolute_http_urls_are_links(value: str) -> None:
    assert safe_http_url(value) is None
    assert with_utm(value, "spring") is None


@pytest.mark.parametrize(("value", "expected"), SAFE)
def test_http_urls_are_kept_cleaned(value: str, expected: str) -> None:
    assert safe_http_url(value) == expected
    assert with_utm(value, "spring").startswith(expected.split("#")[0])


@pytest.mark.parametrize("value", [None, 17, b"https://shop.example", ["https://shop.example"]])
def test_a_url_that_is_not_text_is_no_link(value: object) -> None:
    assert safe_http_url(value) is None


def test_utm_keeps_the_query_as_it_was_and_replaces_only_its_own_keys() -> None:
    link = with_utm("https://shop.example/p?size=M&size=L&gift=&flag&utm_term=x&utm_campaign=old&q=a%2Bb#top",
                    "spring")
    parts = urlsplit(link)
    assert parts.fragment == "top"
    # the shop's parameters, in order and byte for byte (a repeated one, an empty one, one without
    # '=', an encoded '+'), then the four UTM parameters, the old campaign gone
    assert parts.query == ("size=M&size=L&gift=&flag&utm_term=x&q=a%2Bb&utm_source=sendwise&utm_medium=email"
                           "&utm_campaign=spring&utm_content=product_block")
    assert parse_qsl(parts.query, keep_blank_values=True).count(("size", "L")) == 1
    assert with_utm("https://shop.example/p", "spring", "hero").endswith(
        "/p?utm_source=sendwise&utm_medium=email&utm_campaign=spring&utm_content=hero")


CONTROLS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))


def test_clean_text_removes_every_control_character() -> None:
    assert clean_text("Mug\x00 with\tlid\r\nand\x85more\x7f") == "Mug with lid and more"
    assert clean_text(CONTROLS).strip() == ""  # tabs and line breaks become spaces, the rest goes
    assert clean_text(None) == "" and clean_text("Crème brûlée ☕") == "Crème brûlée ☕"


def test_no_control_character_reaches_the_html() -> None:
    """Whatever the item fields hold (a block built elsewhere), the fragment holds no control
    character and no markup of its own: a NUL there stops Handlebars compiling the email."""
    hostile = f"<b>{CONTROLS}{{{{x}}}}</b>"
    items = [BlockItem(product_id="P1", name=hostile, price=hostile, image_url=None, link=None, reason=hostile),
             BlockItem(product_id="P2", name="ok", price=None, image_url="https://shop.example/i.png",
                       link="https://shop.example/p", reason="ok")]
    html = render_html(f"Heading {CONTROLS}", items)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", html)
    assert "<b>" not in html and "{" not in html and "}" not in html
    assert html.count("<a ") == 1 and html.count("</a>") == 1  # only the item with a link is one
    assert html.count("<img ") == 1 and 'src="https://shop.example/i.png"' in html
