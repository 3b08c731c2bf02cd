"""Unit tests for the C tree walk (``streams/vast/_walk.pyx``) behind ``parse_vast``.

Each case pins a way in which reading libxml2's nodes directly could differ
from reading them through lxml's Python API: names, text runs, attribute
values, whitespace, numbers, and the nodes the hardened parser removes.
"""

from __future__ import annotations

import pytest

from streams.vast.model import VastDocument
from streams.vast.parser import parse_vast


def _inline(body: str, *, root_attrs: str = "") -> VastDocument:
    return parse_vast(
        f'<VAST version="4.2"{root_attrs}><Ad id="a"><InLine>{body}</InLine></Ad></VAST>'
    )


def _linear(linear: str, creative_attrs: str = "") -> VastDocument:
    return _inline(
        f"<Creatives><Creative{creative_attrs}><Linear>{linear}</Linear></Creative></Creatives>"
    )


def test_the_walk_is_compiled() -> None:
    # One implementation, in C: there is no pure-Python walk to fall back to.
    from streams.vast import _walk

    assert not _walk.__file__.endswith(".py")


def test_default_and_prefixed_namespaces_and_foreign_ones_match_by_local_name() -> None:
    body = (
        "<Impression>https://i.example/</Impression><AdTitle>t</AdTitle>"
        '<x:Error xmlns:x="urn:other">https://e.example/</x:Error>'
    )
    plain = _inline(body)
    assert plain.ads[0].impressions == ["https://i.example/"]
    assert plain.ads[0].errors == ["https://e.example/"]
    default_ns = _inline(body, root_attrs=' xmlns="http://www.iab.com/VAST"')
    prefixed = parse_vast(
        '<v:VAST xmlns:v="http://www.iab.com/VAST" version="4.2"><v:Ad id="a"><v:InLine>'
        "<v:Impression>https://i.example/</v:Impression><v:AdTitle>t</v:AdTitle>"
        '<x:Error xmlns:x="urn:other">https://e.example/</x:Error>'
        "</v:InLine></v:Ad></v:VAST>"
    )
    assert default_ns == plain == prefixed


def test_namespaced_attributes_are_not_read() -> None:
    doc = _inline(
        '<Creatives><Creative x:id="nope" xmlns:x="urn:x"><Linear><MediaFiles>'
        '<MediaFile x:width="5" width="6" xmlns:x="urn:x">https://m.example/a.mp4</MediaFile>'
        "</MediaFiles></Linear></Creative></Creatives>"
    )
    cr = doc.ads[0].creatives[0]
    assert cr.id is None
    assert cr.media_files[0].width == 6


def test_cdata_and_text_runs_are_joined_then_stripped() -> None:
    doc = _inline(
        "<Impression>  https://a.example/<![CDATA[x?y=1]]>&amp;z  </Impression>"
        "<Impression><![CDATA[  https://b.example/  ]]></Impression>"
        "<AdTitle><![CDATA[<b>bold</b>]]></AdTitle>"
    )
    ad = doc.ads[0]
    assert ad.impressions == ["https://a.example/x?y=1&z", "https://b.example/"]
    assert ad.ad_title == "<b>bold</b>"


def test_comments_and_processing_instructions_are_removed_by_the_parser() -> None:
    doc = _inline(
        "<!-- before --><Impression>https://a.example/<!-- in -->path<?pi x?>/end</Impression>"
        "<?pi between?><AdSystem><!-- only a comment --></AdSystem>"
    )
    ad = doc.ads[0]
    assert ad.impressions == ["https://a.example/path/end"]
    assert ad.ad_system is None


def test_text_after_a_child_element_is_not_the_element_text() -> None:
    # lxml's .text is the text before the first child; the rest is a tail.
    doc = _inline("<Impression><URL>https://u.example/</URL>https://tail.example/</Impression>")
    assert doc.ads[0].impressions == ["https://u.example/"]


def test_entities_and_character_references_in_text_and_attributes() -> None:
    doc = _linear(
        '<TrackingEvents><Tracking event=" start&#32;" offset=" 00:00:01&amp; ">'
        "https://t.example/?a=1&amp;b=&lt;2&gt;&#65;&#x42;</Tracking></TrackingEvents>"
        '<MediaFiles><MediaFile type="video/mp4" codec="a&amp;b&quot;c&apos;" '
        'apiFramework="&#x56;PAID">https://m.example/a.mp4</MediaFile></MediaFiles>'
    )
    cr = doc.ads[0].creatives[0]
    ev = cr.tracking_events[0]
    assert (ev.event, ev.url, ev.offset) == (
        "start",
        "https://t.example/?a=1&b=<2>AB",
        " 00:00:01& ",
    )
    mf = cr.media_files[0]
    assert (mf.codec, mf.api_framework) == ("a&b\"c'", "VPAID")


def test_unicode_text_and_unicode_whitespace() -> None:
    doc = _inline(
        "<AdTitle>\u00a0Caf\u00e9 \u2615\u3000</AdTitle>"
        "<AdSystem>&#160;sys&#x2028;</AdSystem>"
        "<Impression>\u00a0\u00a0</Impression>"
        "<Impression> https://a.example/\u00e9 </Impression>"
    )
    ad = doc.ads[0]
    assert ad.ad_title == "Caf\u00e9 \u2615"
    assert ad.ad_system == "sys"
    assert ad.impressions == ["https://a.example/\u00e9"]


def test_missing_and_empty_attributes() -> None:
    doc = _inline(
        '<Creatives><Creative id="" adId=""><Linear skipoffset="">'
        '<TrackingEvents><Tracking event="">https://t.example/</Tracking>'
        "<Tracking>https://t.example/no-event</Tracking></TrackingEvents>"
        '<MediaFiles><MediaFile width="" delivery="">https://m.example/a.mp4</MediaFile>'
        "</MediaFiles></Linear></Creative></Creatives>"
    )
    cr = doc.ads[0].creatives[0]
    assert cr.id == "" and cr.ad_id is None and cr.skip_offset is None
    assert cr.tracking_events == []
    mf = cr.media_files[0]
    assert mf.width is None and mf.delivery == "" and mf.type is None and mf.id is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("640", 640),
        ("0640", 640),
        (" 7 ", 7),
        ("480.0", 480),
        ("-3", -3),
        ("+5", 5),
        ("123456789012345678", 123456789012345678),
        ("12345678901234567890123", 12345678901234567890123),
        ("\u0663\u0664", 34),
        ("1_000", 1000),
        ("", None),
        ("12px", None),
    ],
)
def test_numbers_are_read_like_int(raw: str, value: int | None) -> None:
    doc = _linear(
        f'<MediaFiles><MediaFile width="{raw}">https://m.example/a.mp4</MediaFile></MediaFiles>'
    )
    assert doc.ads[0].creatives[0].media_files[0].width == value


def test_vast1_url_children() -> None:
    doc = _inline(
        "<Impression><URL> </URL><URL>https://i.example/1</URL><URL>https://i.example/2</URL>"
        "</Impression>"
        "<Error><URL><![CDATA[https://e.example/]]></URL></Error>"
        "<Creatives><Creative><Linear><VideoClicks>"
        "<ClickThrough><URL/><URL>https://c.example/</URL></ClickThrough>"
        '</VideoClicks><TrackingEvents><Tracking event="start">'
        "<URL>https://t.example/1</URL><URL>https://t.example/2</URL></Tracking>"
        "</TrackingEvents><MediaFiles><MediaFile><URL>https://m.example/a.mp4</URL>"
        "</MediaFile></MediaFiles></Linear></Creative></Creatives>"
    )
    ad = doc.ads[0]
    assert ad.impressions == ["https://i.example/1", "https://i.example/2"]
    assert ad.errors == ["https://e.example/"]
    cr = ad.creatives[0]
    assert cr.click_through == "https://c.example/"
    assert [t.url for t in cr.tracking_events] == ["https://t.example/1", "https://t.example/2"]
    assert [m.url for m in cr.media_files] == ["https://m.example/a.mp4"]


def test_verifications_inside_extensions_are_found_at_any_depth_and_namespace() -> None:
    doc = _inline(
        '<Extensions><Extension type="AdVerifications">'
        '<AdVerifications><Verification vendor="one"><JavaScriptResource>'
        "https://v.example/1.js</JavaScriptResource></Verification></AdVerifications>"
        '</Extension><Extension><deep><o:AdVerifications xmlns:o="urn:o">'
        '<o:Verification vendor="two"><VerificationParameters> p </VerificationParameters>'
        "</o:Verification></o:AdVerifications></deep></Extension></Extensions>"
    )
    vs = doc.ads[0].verifications
    assert [(v.vendor, v.javascript_resources, v.parameters) for v in vs] == [
        ("one", ["https://v.example/1.js"], None),
        ("two", [], "p"),
    ]


def test_whitespace_only_and_blank_elements() -> None:
    doc = _inline(
        "<AdSystem>\n\t \r\n</AdSystem><AdTitle/><Impression>   </Impression>"
        "<VASTAdTagURI>  </VASTAdTagURI>"
    )
    ad = doc.ads[0]
    assert ad.ad_system is None and ad.ad_title is None
    assert ad.impressions == [] and ad.vast_ad_tag_uri is None
