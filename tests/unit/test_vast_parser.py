"""Unit tests for the hardened VAST parser (small inline documents only)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from streams.vast.errors import VastError, VastErrorCode
from streams.vast.parser import parse_duration, parse_vast

NS_INLINE = b"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2" xmlns="http://www.iab.com/VAST">
 <Ad id="a1" sequence="1"><InLine>
  <AdSystem>sys</AdSystem><AdTitle> title </AdTitle>
  <Error><![CDATA[ https://e.example/err?c=[ERRORCODE] ]]></Error>
  <Impression id="i1"><![CDATA[https://e.example/imp1]]></Impression>
  <Impression><![CDATA[https://e.example/imp2]]></Impression>
  <Pricing model="CPM" currency="usd"><![CDATA[ 12.345 ]]></Pricing>
  <Creatives>
   <Creative id="c1" adId="ad-1" sequence="1">
    <UniversalAdId idRegistry="Ad-ID">UID-1</UniversalAdId>
    <Linear skipoffset="00:00:05">
     <Duration>00:00:30.500</Duration>
     <TrackingEvents>
      <Tracking event="start"><![CDATA[https://e.example/start]]></Tracking>
      <Tracking event="progress" offset="00:00:10"><![CDATA[https://e.example/p10]]></Tracking>
      <Tracking event="complete"><![CDATA[https://e.example/complete]]></Tracking>
     </TrackingEvents>
     <VideoClicks>
      <ClickThrough><![CDATA[https://adv.example/]]></ClickThrough>
      <ClickTracking><![CDATA[https://e.example/click]]></ClickTracking>
     </VideoClicks>
     <MediaFiles>
      <MediaFile delivery="progressive" type="video/mp4" width="1280" height="720"
        bitrate="bad" codec="H.264"><![CDATA[ https://cdn.example/a.mp4 ]]></MediaFile>
      <MediaFile delivery="streaming" type="application/x-mpegURL" width="640" height="360">
        https://cdn.example/a.m3u8</MediaFile>
      <MediaFile delivery="progressive" type="video/mp4"></MediaFile>
     </MediaFiles>
    </Linear>
   </Creative>
   <Creative><CompanionAds><Companion width="300" height="250">
     <StaticResource creativeType="image/png"><![CDATA[https://cdn.example/c.png]]></StaticResource>
     <HTMLResource><![CDATA[<!DOCTYPE html><html></html>]]></HTMLResource>
     <TrackingEvents><Tracking event="creativeView">https://e.example/cv</Tracking></TrackingEvents>
     <CompanionClickThrough>https://adv.example/c</CompanionClickThrough>
   </Companion></CompanionAds></Creative>
  </Creatives>
  <AdVerifications><Verification vendor="v.example">
   <JavaScriptResource apiFramework="omid"><![CDATA[https://v.example/omid.js]]></JavaScriptResource>
   <VerificationParameters><![CDATA[k=v]]></VerificationParameters>
  </Verification></AdVerifications>
 </InLine></Ad>
</VAST>"""


def test_namespaced_inline_matches_by_local_name() -> None:
    doc = parse_vast(NS_INLINE)
    assert doc.version == "4.2"
    assert len(doc.ads) == 1
    ad = doc.ads[0]
    assert ad.kind == "inline" and ad.id == "a1" and ad.sequence == 1
    assert ad.ad_title == "title"
    assert ad.impressions == ["https://e.example/imp1", "https://e.example/imp2"]
    assert ad.errors == ["https://e.example/err?c=[ERRORCODE]"]
    assert ad.pricing is not None
    assert ad.pricing.value == Decimal("12.345") and isinstance(ad.pricing.value, Decimal)
    assert (ad.pricing.model, ad.pricing.currency) == ("cpm", "USD")
    lin = ad.creatives[0]
    assert lin.kind == "linear" and lin.ad_id == "ad-1" and lin.universal_ad_ids == ["UID-1"]
    assert lin.duration_s == pytest.approx(30.5) and lin.skip_offset == "00:00:05"
    assert [m.url for m in lin.media_files] == [
        "https://cdn.example/a.mp4",
        "https://cdn.example/a.m3u8",
    ]
    assert lin.media_files[0].bitrate is None and lin.media_files[0].width == 1280
    assert [(t.event, t.offset) for t in lin.tracking_events] == [
        ("start", None),
        ("progress", "00:00:10"),
        ("complete", None),
    ]
    assert lin.click_through == "https://adv.example/"
    assert lin.click_trackings == ["https://e.example/click"]
    comp = ad.creatives[1]
    assert comp.kind == "companion"
    c = comp.companions[0]
    assert (c.width, c.height) == (300, 250)
    assert [r.kind for r in c.resources] == ["static", "html"]
    assert "<!DOCTYPE html>" in c.resources[1].value  # DOCTYPE inside CDATA is just text
    assert c.tracking_events[0].event == "creativeView"
    assert ad.verifications[0].javascript_resources == ["https://v.example/omid.js"]
    assert ad.verifications[0].parameters == "k=v"


def test_same_document_without_namespace_parses_identically() -> None:
    plain = NS_INLINE.replace(b' xmlns="http://www.iab.com/VAST"', b"")
    assert parse_vast(plain) == parse_vast(NS_INLINE)


def test_prefixed_namespace() -> None:
    doc = parse_vast(
        b'<v:VAST xmlns:v="http://www.iab.com/VAST" version="3.0"><v:Ad id="p">'
        b"<v:InLine><v:Impression>https://i/</v:Impression></v:InLine></v:Ad>"
        b"</v:VAST>"
    )
    assert doc.ads[0].impressions == ["https://i/"]


def test_vast1_video_ad_serving_template() -> None:
    doc = parse_vast(b"""<VideoAdServingTemplate><Ad id="v1"><InLine>
      <AdSystem>old</AdSystem>
      <Impression><URL id="a"><![CDATA[ http://i.example/1 ]]></URL><URL>http://i.example/2</URL>
      </Impression>
      <TrackingEvents><Tracking event="start"><URL>http://t.example/s</URL></Tracking>
      </TrackingEvents>
      <Video><Duration>00:00:15</Duration><AdID>X</AdID>
       <VideoClicks><ClickThrough><URL>http://adv/</URL></ClickThrough></VideoClicks>
       <MediaFiles><MediaFile delivery="progressive" type="video/x-flv" width="600" height="396">
        <URL><![CDATA[ http://m.example/a.flv ]]></URL></MediaFile></MediaFiles>
      </Video></InLine></Ad></VideoAdServingTemplate>""")
    assert doc.version == "1.0"
    ad = doc.ads[0]
    assert ad.impressions == ["http://i.example/1", "http://i.example/2"]
    assert [m.url for m in ad.media_files] == ["http://m.example/a.flv"]
    lin = ad.creatives[0]
    assert lin.duration_s == 15 and lin.ad_id == "X" and lin.click_through == "http://adv/"
    assert [(t.event, t.url) for t in lin.tracking_events] == [("start", "http://t.example/s")]


def test_vast1_wrapper_uses_vastadtagurl() -> None:
    doc = parse_vast(
        b"<VideoAdServingTemplate><Ad><Wrapper><VASTAdTagURL><URL>http://n/</URL>"
        b"</VASTAdTagURL></Wrapper></Ad></VideoAdServingTemplate>"
    )
    assert doc.ads[0].is_wrapper and doc.ads[0].vast_ad_tag_uri == "http://n/"


def test_wrapper_flags_and_defaults() -> None:
    doc = parse_vast(b"""<VAST version="4.1">
      <Ad id="w1"><Wrapper followAdditionalWrappers="0" allowMultipleAds="true"
        fallbackOnNoAd="false"><VASTAdTagURI> https://next/ </VASTAdTagURI></Wrapper></Ad>
      <Ad id="w2"><Wrapper><VASTAdTagURI>https://x/</VASTAdTagURI></Wrapper></Ad></VAST>""")
    w1, w2 = doc.ads
    assert w1.vast_ad_tag_uri == "https://next/"
    assert (w1.follow_additional_wrappers, w1.allow_multiple_ads, w1.fallback_on_no_ad) == (
        False,
        True,
        False,
    )
    assert (w2.follow_additional_wrappers, w2.allow_multiple_ads, w2.fallback_on_no_ad) == (
        True,
        False,
        None,
    )


def test_pod_and_standalone_split() -> None:
    doc = parse_vast(
        b'<VAST version="3.0"><Ad id="b" sequence="2"><InLine/></Ad>'
        b'<Ad id="s"><InLine/></Ad><Ad id="a" sequence="1"><InLine/></Ad>'
        b'<Ad id="junk"><Nothing/></Ad><Error>https://root/err</Error></VAST>'
    )
    assert [a.id for a in doc.pod] == ["a", "b"]
    assert [a.id for a in doc.standalone] == ["s"]
    assert doc.errors == ["https://root/err"]


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"", VastErrorCode.XML_PARSE_ERROR),
        (b"   ", VastErrorCode.XML_PARSE_ERROR),
        (b"<VAST version='4.0'><Ad>", VastErrorCode.XML_PARSE_ERROR),
        (b"<html><body>nope</body></html>", VastErrorCode.SCHEMA_VALIDATION_ERROR),
        (b"<VAST version='5.0'/>", VastErrorCode.VERSION_NOT_SUPPORTED),
        (b"<VAST version='abc'/>", VastErrorCode.VERSION_NOT_SUPPORTED),
        (
            b"<VAST version='4.0'><Ad><InLine><AdTitle>&undefined;</AdTitle></InLine></Ad></VAST>",
            VastErrorCode.XML_PARSE_ERROR,
        ),
    ],
)
def test_error_codes(xml: bytes, code: VastErrorCode) -> None:
    with pytest.raises(VastError) as ei:
        parse_vast(xml)
    assert ei.value.code == code


XXE = b"""<?xml version="1.0"?>
<!-- a comment first -->
<!DOCTYPE VAST [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<VAST version="4.0"><Ad><InLine><AdTitle>&xxe;</AdTitle></InLine></Ad></VAST>"""


def test_xxe_is_refused_without_reading_the_file() -> None:
    with pytest.raises(VastError) as ei:
        parse_vast(XXE)
    assert ei.value.code == VastErrorCode.XML_PARSE_ERROR and ei.value.reason == "doctype"
    assert "root:" not in str(ei.value)


def test_external_dtd_is_refused() -> None:
    with pytest.raises(VastError) as ei:
        parse_vast(b'<!DOCTYPE VAST SYSTEM "http://127.0.0.1:1/x.dtd"><VAST version="4.0"/>')
    assert ei.value.reason == "doctype"


def test_billion_laughs_refused_fast() -> None:
    ents = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = f'<?xml version="1.0"?><!DOCTYPE v [<!ENTITY l0 "lol">{ents}]><VAST>&l9;</VAST>'
    t = time.perf_counter()
    with pytest.raises(VastError) as ei:
        parse_vast(doc.encode())
    assert ei.value.code == VastErrorCode.XML_PARSE_ERROR
    assert time.perf_counter() - t < 0.5


def test_prolog_scan_is_linear_and_still_finds_doctype() -> None:
    # The old prolog regex backtracked exponentially on many PIs (30 took minutes).
    t0 = time.perf_counter()
    assert parse_vast(b"<?a?>" * 20_000 + b"<VAST version='4.0'/>").ads == []
    assert parse_vast(b"<!-- - ->- -->" * 20_000 + b"<VAST version='4.0'/>").ads == []
    assert time.perf_counter() - t0 < 1.0
    for prolog in (
        b"<?xml version='1.0'?><!-- c --><?pi x?>\n<!doctype VAST>",
        b"\xef\xbb\xbf <?a ?? > ?><!-- a--b --><!DOCTYPE VAST>",
    ):
        with pytest.raises(VastError) as ei:
            parse_vast(prolog + b"<VAST version='4.0'/>")
        assert ei.value.reason == "doctype"


def test_utf16_doctype_refused_by_second_check() -> None:
    doc = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE VAST [<!ENTITY a "b">]>'
        '<VAST version="4.0"/>'
    )
    with pytest.raises(VastError) as ei:
        parse_vast(doc.encode("utf-16"))
    assert ei.value.code == VastErrorCode.XML_PARSE_ERROR


@pytest.mark.parametrize(
    "pricing",
    [
        b'<Pricing model="cpm" currency="USD">NaN</Pricing>',
        b'<Pricing model="cpm" currency="USD">-1</Pricing>',
        b'<Pricing model="cpm" currency="USD">abc</Pricing>',
        b'<Pricing model="cpm" currency="US">1.0</Pricing>',
        b'<Pricing currency="USD">1.0</Pricing>',
    ],
)
def test_insane_pricing_is_dropped(pricing: bytes) -> None:
    doc = parse_vast(b'<VAST version="4.0"><Ad><InLine>' + pricing + b"</InLine></Ad></VAST>")
    assert doc.ads[0].pricing is None


def test_str_input_with_encoding_declaration() -> None:
    doc = parse_vast(
        '<?xml version="1.0" encoding="UTF-8"?><VAST version="2.0"><Ad><InLine>'
        "<AdTitle>é</AdTitle></InLine></Ad></VAST>"
    )
    assert doc.ads[0].ad_title == "é"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("00:00:15", 15.0),
        ("01:02:03.250", 3723.25),
        ("bad", None),
        ("00:61:00", None),
        (None, None),
    ],
)
def test_parse_duration(value: str | None, expected: float | None) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "nan", "abc", " ", "4x3"])
def test_malformed_optional_numbers_become_none(bad: str) -> None:
    # "inf" and "1e400" used to escape as OverflowError and fail the whole document.
    doc = parse_vast(f"""<VAST version="4.0"><Ad sequence="{bad}"><InLine><Creatives>
      <Creative sequence="{bad}"><Linear><MediaFiles>
       <MediaFile width="{bad}" height="{bad}" bitrate="{bad}" minBitrate="{bad}"
         maxBitrate="{bad}">https://cdn.example/a.mp4</MediaFile></MediaFiles></Linear></Creative>
      <Creative><NonLinearAds><NonLinear width="{bad}" height="{bad}">
       <StaticResource creativeType="image/png">https://cdn.example/n.png</StaticResource>
      </NonLinear></NonLinearAds></Creative>
      <Creative><CompanionAds><Companion width="{bad}" height="{bad}">
       <StaticResource creativeType="image/png">https://cdn.example/c.png</StaticResource>
      </Companion></CompanionAds></Creative>
    </Creatives></InLine></Ad></VAST>""")
    ad = doc.ads[0]
    lin, nl, comp = ad.creatives
    m = lin.media_files[0]
    assert ad.sequence is None and lin.sequence is None
    assert (m.width, m.height, m.bitrate, m.min_bitrate, m.max_bitrate) == (None,) * 5
    assert (nl.nonlinears[0].width, nl.nonlinears[0].height) == (None, None)
    assert (comp.companions[0].width, comp.companions[0].height) == (None, None)


def test_lenient_numbers_still_read() -> None:
    doc = parse_vast(
        b'<VAST version="4.0"><Ad><InLine><Creatives><Creative><Linear><MediaFiles>'
        b'<MediaFile width=" 640 " height="480.0" minBitrate="300" maxBitrate="+900">'
        b"https://cdn.example/a.mp4</MediaFile></MediaFiles></Linear></Creative>"
        b"</Creatives></InLine></Ad></VAST>"
    )
    m = doc.ads[0].media_files[0]
    assert (m.width, m.height, m.min_bitrate, m.max_bitrate) == (640, 480, 300, 900)


def test_an_adid_child_of_linear_survives_a_creative_without_ad_id_attributes() -> None:
    doc = parse_vast(b"""<VAST version="2.0"><Ad id="a"><InLine><AdSystem>s</AdSystem>
      <AdTitle>t</AdTitle><Impression>http://i.example/</Impression><Creatives>
      <Creative><Linear><AdID>legacy-7</AdID><Duration>00:00:05</Duration><MediaFiles>
      <MediaFile delivery="progressive" type="video/mp4" width="640" height="360">
      http://m.example/a.mp4</MediaFile></MediaFiles></Linear></Creative>
      <Creative adId="attr-1"><Linear><AdID>legacy-8</AdID><Duration>00:00:05</Duration>
      </Linear></Creative></Creatives></InLine></Ad></VAST>""")
    first, second = doc.ads[0].creatives
    assert first.ad_id == "legacy-7"
    assert second.ad_id == "attr-1"  # the Creative's attribute wins
