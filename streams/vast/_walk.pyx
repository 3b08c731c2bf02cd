# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The tree-to-model walk of the VAST parser, over libxml2's nodes in C.

:func:`walk_document` turns the root of a tree built by
``parser.parse_vast_tree`` (the hardened lxml parse) into a
:class:`~streams.vast.model.VastDocument`. It exists because the same walk in
Python spent most of ``parse_vast``'s time in lxml's per-element proxies
(child iteration, ``.tag``, ``.get()``, ``.text``); here it reads libxml2's
structs directly and creates Python objects only for the model.

Guarantees:
- Reads only, never changes the tree, and calls no libxml2 function: lxml
  links libxml2 statically and nothing here links against it, so the only
  coupling is the struct layout of the headers in lxml's wheel. That is why
  pyproject.toml pins the build and runtime lxml to the same exact version.
- Sees each node the way the lxml API does: an element's local name is what
  follows the first ``}`` of lxml's ``{href}name`` tag; ``.text`` is the run
  of text/CDATA nodes before the first other child (XInclude markers
  skipped); an attribute is matched only when it has no namespace, like
  ``.get(name)``, and an empty one reads as ``""``; text is decoded from
  UTF-8 and stripped exactly as ``str.strip()`` strips it.
- Comments and processing instructions never reach it (``make_parser()``
  removes them), and entity reference nodes cannot occur either: a document
  with a DOCTYPE is refused before the walk, and without one every entity
  but the predefined ones is a fatal parse error, while those are expanded
  into text. Any non-element child is therefore skipped.
- Recursion (the ``<Extensions>`` search) is bounded by libxml2's depth limit
  of 256 levels without ``huge_tree``.
"""

from cpython.long cimport PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strchr, strcmp, strlen
from lxml.includes.etreepublic cimport LXML_VERSION_STRING, _Element, import_lxml__etree
from lxml.includes.tree cimport (
    LIBXML_VERSION,
    XML_CDATA_SECTION_NODE,
    XML_ELEMENT_NODE,
    XML_TEXT_NODE,
    XML_XINCLUDE_END,
    XML_XINCLUDE_START,
    xmlAttr,
    xmlNode,
)

from decimal import Decimal, InvalidOperation

from lxml import etree

from .model import (
    Ad,
    AdVerification,
    Companion,
    Creative,
    MediaFile,
    NonLinear,
    Pricing,
    Resource,
    TrackingEvent,
    VastDocument,
)

# The struct layouts were compiled in from the headers of one lxml wheel; an
# lxml installed later over the pin must fail loudly here, not misread nodes.
_BUILT_FOR = (LXML_VERSION_STRING.decode(), LIBXML_VERSION)
_RUNNING = (etree.__version__, int("%d%02d%02d" % etree.LIBXML_VERSION))
if _BUILT_FOR != _RUNNING:
    raise ImportError(
        f"streams.vast._walk was built for lxml {_BUILT_FOR[0]} (libxml2 {_BUILT_FOR[1]}) "
        f"but lxml {_RUNNING[0]} (libxml2 {_RUNNING[1]}) is installed; reinstall xsp "
        "(pip install -e .) to rebuild it"
    )

# Binds the _Element type to lxml.etree's (Cython also checks its size).
import_lxml__etree()

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


# --- nodes -----------------------------------------------------------------

cdef inline const char* _name(xmlNode* n) noexcept:
    """Local name of element ``n`` as the Python walk split lxml's tag.

    A namespace URI containing ``}`` makes that split keep part of the URI
    in the name, which then matches no VAST name: answer ``""`` for it.
    """
    if n.ns is not NULL and n.ns.href is not NULL and strchr(<const char*>n.ns.href, c'}') is not NULL:
        return b""
    return <const char*>n.name


cdef inline bint _is(const char* a, const char* b) noexcept:
    return strcmp(a, b) == 0


cdef inline xmlNode* _text_node(xmlNode* c) noexcept:
    """The text/CDATA node at ``c`` (past XInclude markers), else NULL (lxml's rule)."""
    while c is not NULL:
        if c.type == XML_TEXT_NODE or c.type == XML_CDATA_SECTION_NODE:
            return c
        if c.type == XML_XINCLUDE_START or c.type == XML_XINCLUDE_END:
            c = c.next
        else:
            return NULL
    return NULL


cdef inline bint _ws(unsigned char ch) noexcept:
    # The ASCII characters str.strip() removes.
    return ch == 32 or 9 <= ch <= 13 or 28 <= ch <= 31


cdef str _strip_decode(const char* s, Py_ssize_t n):
    """``s[:n].decode().strip()``, stripping ASCII in C before decoding."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j = n
    while i < j and _ws(<unsigned char>s[i]):
        i += 1
    while j > i and _ws(<unsigned char>s[j - 1]):
        j -= 1
    if i == j:
        return ""
    r = PyUnicode_DecodeUTF8(s + i, j - i, NULL)
    if <unsigned char>s[i] >= 0x80 or <unsigned char>s[j - 1] >= 0x80:
        # A non-ASCII character at an end may be whitespace to str.strip()
        # (NBSP, U+2028, ideographic space ...): let it decide.
        r = r.strip()
    return r


cdef str _text(xmlNode* el):
    """``(el.text or "").strip()``."""
    cdef xmlNode* t = _text_node(el.children)
    if t is NULL:
        return ""
    cdef xmlNode* nxt = _text_node(t.next)
    if nxt is NULL:  # the usual case: one text node
        return _strip_decode(<const char*>t.content, strlen(<const char*>t.content))
    cdef bytes joined = b""
    while t is not NULL:
        joined += <bytes>(<const char*>t.content)
        t = _text_node(t.next)
    return _strip_decode(joined, len(joined))


cdef str _attr_value(xmlAttr* a):
    """The value lxml reports: the attribute's text children joined, ``""`` if none."""
    cdef xmlNode* c = a.children
    if c is NULL:
        return ""
    if c.next is NULL and c.type == XML_TEXT_NODE:  # the usual case: one text node
        return PyUnicode_DecodeUTF8(<const char*>c.content, strlen(<const char*>c.content), NULL)
    cdef bytes joined = b""
    while c is not NULL:
        if (c.type == XML_TEXT_NODE or c.type == XML_CDATA_SECTION_NODE) and c.content is not NULL:
            joined += <bytes>(<const char*>c.content)
        c = c.next
    return PyUnicode_DecodeUTF8(joined, len(joined), NULL)


cdef object _attr(xmlNode* el, const char* name):
    """``el.get(name)``: the un-namespaced attribute ``name``, else None."""
    cdef xmlAttr* a = el.properties
    while a is not NULL:
        if a.ns is NULL and strcmp(<const char*>a.name, name) == 0:
            return _attr_value(a)
        a = a.next
    return None


cdef object _int_attr(xmlNode* el, const char* name):
    """``_int(el.get(name))``; plain ASCII digits are converted in C."""
    cdef xmlAttr* a = el.properties
    cdef xmlNode* c
    cdef const unsigned char* p
    cdef long long v
    cdef int k
    while a is not NULL:
        if a.ns is NULL and strcmp(<const char*>a.name, name) == 0:
            c = a.children
            if c is not NULL and c.next is NULL and c.type == XML_TEXT_NODE:
                p = <const unsigned char*>c.content
                v = 0
                k = 0
                while k < 18 and 48 <= p[k] <= 57:
                    v = v * 10 + (p[k] - 48)
                    k += 1
                if k > 0 and p[k] == 0:
                    return PyLong_FromLongLong(v)
            return _int(_attr_value(a))
        a = a.next
    return None


# --- scalar rules ----------------------------------------------------------

cdef object _int(object v):
    """Lenient integer: None when absent or malformed, never an exception."""
    if v is None:
        return None
    if v.isdecimal():  # int() accepts every Unicode decimal digit
        return int(v)
    try:
        return int(v)  # int() already ignores surrounding whitespace
    except ValueError:
        try:  # "480.0" appears in the wild; "inf" and "1e400" overflow
            return int(float(v))
        except (ValueError, OverflowError):
            return None


cdef object _bool(object v, object default):
    if v is None:
        return default
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    return default


def parse_duration(value: str | None) -> float | None:
    """``HH:MM:SS`` or ``HH:MM:SS.mmm`` to seconds; ``None`` if absent or malformed."""
    if not value:
        return None
    parts = value.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    if h < 0 or not 0 <= m < 60 or not 0 <= s < 60:
        return None
    return h * 3600 + m * 60 + s


cdef object _pricing(xmlNode* el):
    """Exact Decimal price; None (ignored) unless value, model and currency are sane.

    A decision must never act on a guessed price, so NaN, infinities,
    negatives and non-ISO-4217-shaped currencies are dropped rather than coerced.
    """
    raw = _text(el)
    model = (_attr(el, b"model") or "").strip().lower()
    currency = (_attr(el, b"currency") or "").strip().upper()
    if not raw or not model or len(currency) != 3 or not currency.isalpha():
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    return Pricing(model, currency, value)


# --- URLs ------------------------------------------------------------------

cdef void _add_urls(list out, xmlNode* el) except *:
    """Append the URL(s) of a URI element: its text, else (VAST 1) its ``<URL>`` children."""
    t = _text(el)
    if t:
        out.append(t)
        return
    cdef xmlNode* c = el.children
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE and _is(_name(c), b"URL"):
            u = _text(c)
            if u:
                out.append(u)
        c = c.next


cdef object _first_url(xmlNode* el):
    """The first URL of a URI element, else None."""
    t = _text(el)
    if t:
        return t
    cdef xmlNode* c = el.children
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE and _is(_name(c), b"URL"):
            u = _text(c)
            if u:
                return u
        c = c.next
    return None


# --- creatives -------------------------------------------------------------

cdef void _tracking_into(list out, xmlNode* el) except *:
    """Append the ``<Tracking>`` children of a ``<TrackingEvents>`` to ``out``."""
    cdef xmlNode* t = el.children
    cdef list urls
    while t is not NULL:
        if t.type == XML_ELEMENT_NODE and _is(_name(t), b"Tracking"):
            ev = _attr(t, b"event")
            if ev:
                ev = ev.strip()
                offset = _attr(t, b"offset")
                u = _text(t)
                if u:  # the common VAST 2+ shape: the URL is the element text
                    out.append(TrackingEvent(ev, u, offset))
                else:
                    urls = []
                    _add_urls(urls, t)
                    for u in urls:
                        out.append(TrackingEvent(ev, u, offset))
        t = t.next


cdef void _media_files_into(list out, xmlNode* el) except *:
    cdef xmlNode* m = el.children
    while m is not NULL:
        if m.type == XML_ELEMENT_NODE and _is(_name(m), b"MediaFile"):
            url = _first_url(m)
            # A MediaFile without a URL cannot be played: skip, don't fail.
            if url is not None:
                out.append(
                    MediaFile(
                        url,
                        _attr(m, b"delivery"),
                        _attr(m, b"type"),
                        _int_attr(m, b"width"),
                        _int_attr(m, b"height"),
                        _int_attr(m, b"bitrate"),
                        _int_attr(m, b"minBitrate"),
                        _int_attr(m, b"maxBitrate"),
                        _attr(m, b"codec"),
                        _attr(m, b"apiFramework"),
                        _attr(m, b"id"),
                    )
                )
        m = m.next


cdef void _linear_into(object cr, xmlNode* lin) except *:
    """Fill a linear creative from a VAST 2+ ``<Linear>`` or VAST 1 ``<Video>``."""
    skip = _attr(lin, b"skipoffset")
    if skip:
        cr.skip_offset = skip
    cdef xmlNode* c = lin.children
    cdef xmlNode* vc
    cdef const char* n
    cdef const char* vn
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"TrackingEvents"):
                _tracking_into(cr.tracking_events, c)
            elif _is(n, b"MediaFiles"):
                _media_files_into(cr.media_files, c)
            elif _is(n, b"Duration"):
                cr.duration = _text(c) or None
                cr.duration_s = parse_duration(cr.duration)
            elif _is(n, b"VideoClicks"):
                vc = c.children
                while vc is not NULL:
                    if vc.type == XML_ELEMENT_NODE:
                        vn = _name(vc)
                        if _is(vn, b"ClickThrough"):
                            cr.click_through = _first_url(vc)
                        elif _is(vn, b"ClickTracking"):
                            _add_urls(cr.click_trackings, vc)
                        elif _is(vn, b"CustomClick"):
                            _add_urls(cr.custom_clicks, vc)
                    vc = vc.next
            elif _is(n, b"AdID") and cr.ad_id is None:  # VAST 1 <Video><AdID>
                cr.ad_id = _text(c) or None
        c = c.next


cdef tuple _resources(xmlNode* el):
    cdef list res = []
    click = None
    cdef list tracks = []
    cdef xmlNode* c = el.children
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"StaticResource"):
                res.append(Resource("static", _text(c), _attr(c, b"creativeType")))
            elif _is(n, b"IFrameResource"):
                res.append(Resource("iframe", _text(c)))
            elif _is(n, b"HTMLResource") or _is(n, b"Code"):
                res.append(Resource("html", _text(c)))
            elif _is(n, b"URL"):  # VAST 1 NonLinear/Companion resource URL
                res.append(Resource("static", _text(c), _attr(el, b"creativeType")))
            elif _is(n, b"NonLinearClickThrough") or _is(n, b"CompanionClickThrough"):
                click = _first_url(c)
            elif _is(n, b"NonLinearClickTracking") or _is(n, b"CompanionClickTracking"):
                _add_urls(tracks, c)
        c = c.next
    return res, click, tracks


cdef void _nonlinear_into(object cr, xmlNode* el) except *:
    cdef xmlNode* c = el.children
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"NonLinear"):
                res, click, tracks = _resources(c)
                cr.nonlinears.append(
                    NonLinear(
                        _attr(c, b"id"),
                        _int_attr(c, b"width"),
                        _int_attr(c, b"height"),
                        res,
                        click,
                        tracks,
                    )
                )
                cr.click_trackings.extend(tracks)
            elif _is(n, b"TrackingEvents"):
                _tracking_into(cr.tracking_events, c)
        c = c.next


cdef void _companions_into(object cr, xmlNode* el) except *:
    cdef xmlNode* c = el.children
    cdef xmlNode* t
    cdef list tev
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE and _is(_name(c), b"Companion"):
            res, click, tracks = _resources(c)
            tev = []
            t = c.children
            while t is not NULL:
                if t.type == XML_ELEMENT_NODE and _is(_name(t), b"TrackingEvents"):
                    _tracking_into(tev, t)
                t = t.next
            cr.companions.append(
                Companion(
                    _attr(c, b"id"),
                    _int_attr(c, b"width"),
                    _int_attr(c, b"height"),
                    res,
                    click,
                    tracks,
                    tev,
                )
            )
        c = c.next


cdef object _new_creative(str kind):
    # Positional with fresh lists: ~2x cheaper than the default_factory path.
    return Creative(
        kind, None, None, None, None, None, None, [], [], None, [], [], [], [], []
    )


cdef object _creative(xmlNode* el):
    cr = None
    cdef list uids = []
    cdef xmlNode* c = el.children
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"Linear"):
                cr = _new_creative("linear")
                _linear_into(cr, c)
            elif _is(n, b"UniversalAdId"):
                t = _text(c) or _attr(c, b"idValue")
                if t:
                    uids.append(t)
            elif _is(n, b"NonLinearAds"):
                cr = _new_creative("nonlinear")
                _nonlinear_into(cr, c)
            elif _is(n, b"CompanionAds"):
                cr = _new_creative("companion")
                _companions_into(cr, c)
        c = c.next
    if cr is None:
        return None
    cr.id = _attr(el, b"id")
    seq = _attr(el, b"sequence")
    if seq is not None:
        cr.sequence = _int(seq)
    # A VAST 1 <AdID> child read above stays unless an attribute names one.
    cr.ad_id = _attr(el, b"adId") or _attr(el, b"AdID") or cr.ad_id
    cr.universal_ad_ids = uids
    return cr


# --- ads -------------------------------------------------------------------

cdef list _verifications(xmlNode* el):
    cdef list out = []
    cdef xmlNode* c = el.children
    cdef xmlNode* r
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE and _is(_name(c), b"Verification"):
            v = AdVerification(vendor=_attr(c, b"vendor"))
            r = c.children
            while r is not NULL:
                if r.type == XML_ELEMENT_NODE:
                    n = _name(r)
                    if _is(n, b"JavaScriptResource"):
                        _add_urls(v.javascript_resources, r)
                    elif _is(n, b"ExecutableResource"):
                        _add_urls(v.executable_resources, r)
                    elif _is(n, b"TrackingEvents"):
                        _tracking_into(v.tracking_events, r)
                    elif _is(n, b"VerificationParameters"):
                        v.parameters = _text(r) or None
                r = r.next
            out.append(v)
        c = c.next
    return out


cdef void _extension_verifications(list out, xmlNode* el) except *:
    """Every ``AdVerifications`` below ``el`` in document order, as
    ``el.iter("{*}AdVerifications")`` finds them: by libxml2's local name in
    any namespace, descending into matches too."""
    cdef xmlNode* c = el.children
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            if _is(<const char*>c.name, b"AdVerifications"):
                out.extend(_verifications(c))
            _extension_verifications(out, c)
        c = c.next


cdef object _ad(xmlNode* ad_el):
    cdef xmlNode* body = NULL
    kind = ""
    cdef xmlNode* c = ad_el.children
    cdef xmlNode* cc
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"InLine"):
                body, kind = c, "inline"
                break
            if _is(n, b"Wrapper"):
                body, kind = c, "wrapper"
                break
        c = c.next
    if body is NULL:
        return None
    seq = _attr(ad_el, b"sequence")
    ad = Ad(
        kind,
        _attr(ad_el, b"id"),
        None if seq is None else _int(seq),
        None,
        None,
        [],
        [],
        [],
        None,
        [],
        None,
        True,
        False,
        None,
        None,
    )
    if kind == "wrapper" and body.properties is not NULL:
        ad.follow_additional_wrappers = bool(
            _bool(_attr(body, b"followAdditionalWrappers"), True))
        ad.allow_multiple_ads = bool(_bool(_attr(body, b"allowMultipleAds"), False))
        ad.fallback_on_no_ad = _bool(_attr(body, b"fallbackOnNoAd"), None)
    cdef list impressions = ad.impressions
    cdef list errors = ad.errors
    cdef list creatives = ad.creatives
    cdef list v1_tracking = []
    v1_linear = None
    # Branches are ordered by how often the element occurs in real responses.
    c = body.children
    while c is not NULL:
        if c.type != XML_ELEMENT_NODE:
            c = c.next
            continue
        n = _name(c)
        if _is(n, b"Impression"):
            _add_urls(impressions, c)
        elif _is(n, b"Creatives"):
            cc = c.children
            while cc is not NULL:
                if cc.type == XML_ELEMENT_NODE and _is(_name(cc), b"Creative"):
                    cr = _creative(cc)
                    if cr is not None:
                        creatives.append(cr)
                cc = cc.next
        elif _is(n, b"Error"):
            _add_urls(errors, c)
        elif _is(n, b"AdSystem"):
            ad.ad_system = _text(c) or None
        elif _is(n, b"AdTitle"):
            ad.ad_title = _text(c) or None
        elif _is(n, b"VASTAdTagURI") or _is(n, b"VASTAdTagURL"):
            ad.vast_ad_tag_uri = _first_url(c)
        elif _is(n, b"Pricing"):
            if ad.pricing is None:
                ad.pricing = _pricing(c)
        elif _is(n, b"AdServingId"):
            ad.ad_serving_id = _text(c) or None
        elif _is(n, b"Extensions"):
            # VAST 3 carried verification in <Extension type="AdVerifications">.
            _extension_verifications(ad.verifications, c)
        elif _is(n, b"AdVerifications"):
            ad.verifications.extend(_verifications(c))
        # VAST 1.0 layout: <Video>, <TrackingEvents>, <NonLinearAds>, <CompanionAds>
        # sit directly under InLine/Wrapper.
        elif _is(n, b"Video"):
            v1_linear = Creative("linear")
            _linear_into(v1_linear, c)
            creatives.append(v1_linear)
        elif _is(n, b"TrackingEvents"):
            _tracking_into(v1_tracking, c)
        elif _is(n, b"NonLinearAds"):
            cr = Creative("nonlinear")
            _nonlinear_into(cr, c)
            creatives.append(cr)
        elif _is(n, b"CompanionAds"):
            cr = Creative("companion")
            _companions_into(cr, c)
            creatives.append(cr)
        c = c.next
    if v1_tracking:
        if v1_linear is None:
            v1_linear = Creative("linear")
            creatives.append(v1_linear)
        v1_linear.tracking_events.extend(v1_tracking)
    return ad


def walk_document(_Element root not None, version: str | None) -> object:
    """Build the :class:`VastDocument` of a VAST root whose name and version
    ``parse_vast`` has already checked: its ``<Ad>`` children that are InLine
    or Wrapper ads, in document order, and its root-level ``<Error>`` URLs."""
    cdef list ads = []
    cdef list errors = []
    cdef xmlNode* c = root._c_node.children
    cdef const char* n
    while c is not NULL:
        if c.type == XML_ELEMENT_NODE:
            n = _name(c)
            if _is(n, b"Ad"):
                ad = _ad(c)
                if ad is not None:
                    ads.append(ad)
            elif _is(n, b"Error"):
                _add_urls(errors, c)
        c = c.next
    return VastDocument(version, ads, errors)
