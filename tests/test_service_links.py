"""What may reach an email, as pure functions: links (absolute http(s) only, UTM parameters added
without touching the rest of the query) and text (no control character in a block or its HTML)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

import pytest

from features.links import safe_http_url
from serving.product_block import (
    BlockItem,
    check_product_url,
    clean_text,
    product_link,
    render_html,
    with_utm,
)

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


def test_utm_source_and_medium_are_the_shops() -> None:
    """A shop's own utm_source and utm_medium (SENDWISE_UTM_SOURCE / _MEDIUM) take the place of
    sendwise / email; the rest of the rules are the same."""
    link = with_utm("https://shop.example/p?utm_source=old&size=M", "spring", source="newsletter", medium="e-mail_v2")
    assert link == ("https://shop.example/p?size=M&utm_source=newsletter&utm_medium=e-mail_v2&utm_campaign=spring"
                    "&utm_content=product_block")
    assert with_utm("https://shop.example/p", "spring") == with_utm("https://shop.example/p", "spring",
                                                                    source="sendwise", medium="email")


TEMPLATE = "https://shop.example/products/{product_id}?ref=mail"
# (product id, what it becomes in the link): every character but letters, digits and _.-~ is
# percent-encoded, so no id leaves its path segment, adds a query or fragment, or ends the HTML attribute.
IDS = [
    ("P1", "P1"), ("sku_1.2-a~b", "sku_1.2-a~b"),
    ('"><script>alert(1)</script>', "%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"),
    ("../x?y#z", "..%2Fx%3Fy%23z"), ("a b&c=d", "a%20b%26c%3Dd"), ("{{FirstName}}", "%7B%7BFirstName%7D%7D"),
    ("x\x00y\n", "x%00y%0A"), ("Crème", "Cr%C3%A8me"), ("%2e%2e", "%252e%252e"),
    ("javascript:alert(1)", "javascript%3Aalert%281%29"), ("//evil.example", "%2F%2Fevil.example"),
    ("\\evil", "%5Cevil"), ("'", "%27"),
]


@pytest.mark.parametrize(("product_id", "encoded"), IDS)
def test_a_product_link_holds_the_id_percent_encoded(product_id: str, encoded: str) -> None:
    link = product_link(TEMPLATE, product_id)
    assert link == f"https://shop.example/products/{encoded}?ref=mail"
    assert safe_http_url(link) == link
    parts = urlsplit(link)
    assert (parts.netloc, parts.query, parts.fragment) == ("shop.example", "ref=mail", "")
    assert parts.path.count("/") == 2 and not re.search(r"[\"'<>{}\s\\\x00-\x1f]", link)
    html = render_html("h", [BlockItem(product_id=product_id, name="n", price=None, image_url=None,
                                       link=with_utm(link, "spring"), reason="r")])
    assert html.count('href="') == 1 and "<script" not in html


@pytest.mark.parametrize("product_id", ["", ".", "..", None])
def test_an_id_that_is_no_path_segment_gets_no_link(product_id: str | None) -> None:
    """'.' and '..' (or %2e%2e, which browsers read the same) would name the parent path: no link."""
    assert product_link(TEMPLATE, product_id) is None


def test_the_id_can_go_in_the_query_or_several_places() -> None:
    assert product_link("https://shop.example/p?id={product_id}&src={product_id}", "a&b") == \
        "https://shop.example/p?id=a%26b&src=a%26b"
    assert check_product_url("  HTTPS://shop.example/p/{product_id}  ") == "https://shop.example/p/{product_id}"


@pytest.mark.parametrize(("template", "message"), [
    ("https://shop.example/products/", r"no \{product_id\}"),
    ("javascript:alert('{product_id}')", "absolute http"),
    ("/products/{product_id}", "absolute http"),
    ("//shop.example/products/{product_id}", "absolute http"),
    ("https://shop.example/{product_id}/{sku}", r"only \{product_id\}"),
    ("https://shop.example/{product_id}?x={0}", r"only \{product_id\}"),
    ("https://shop.example/{product_id}}", r"only \{product_id\}"),
    ("https://shop.example/{ product_id }", r"no \{product_id\}"),
    ("https://{product_id}.shop.example/", "not in the host"),
])
def test_a_bad_template_says_what_is_expected(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_product_url(template)
    assert "https://shop.example/products/{product_id}" in str(caught.value)  # an example of a good one
