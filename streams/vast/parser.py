"""Hardened VAST parsing (VAST 1.0 ``VideoAdServingTemplate`` through VAST 4.3).

Guarantees:
- No entity is ever expanded, no DTD is ever loaded, nothing is fetched from
  the network: the lxml parser is configured explicitly (not by default), and
  any document that declares a DOCTYPE is refused with code 100 before lxml
  sees its body, so XXE and "billion laughs" never get a chance to run.
- Elements are matched by local name, so ``xmlns="http://www.iab.com/VAST"``
  (and prefixed) documents parse exactly like un-namespaced ones.
- The tree-to-model walk runs in C over libxml2's nodes (``_walk.pyx``, see
  its docstring for how it reads them); this module keeps the hardening and
  the root checks.
- Lenient where real-world files are sloppy (whitespace around URLs, VAST 1
  ``<URL>`` children, malformed optional numbers become ``None``), strict where
  a decision depends on it (root element, supported version, exact Decimal
  pricing or none at all).
"""

from __future__ import annotations

import re
import threading

from lxml import etree

# parse_duration is part of the lenient scalar rules the walk applies; it is
# re-exported here, where callers and tests have always imported it from.
from ._walk import parse_duration as parse_duration
from ._walk import walk_document
from .errors import VastError, VastErrorCode
from .model import VastDocument

__all__ = ["make_parser", "parse_vast", "parse_vast_tree"]

# A DOCTYPE can only appear in the prolog (before the root element), so only
# the XML declaration, comments and PIs that may precede it are scanned; a
# "<!DOCTYPE html>" inside an HTMLResource CDATA section is legitimately left
# alone. Every repetition is possessive (``*+``/``++``, Python 3.11+) and the
# alternatives start with disjoint prefixes, so the scan is linear: the
# earlier lazy ``.*?`` form backtracked exponentially on a prolog of many PIs
# (``b"<?a?>" * 30`` took minutes and would have stalled the event loop).
_DOCTYPE_IN_PROLOG = re.compile(
    rb"(?:\xef\xbb\xbf)?"
    rb"(?:\s++|<\?(?:[^?]++|\?(?!>))*+\?>|<!--(?:[^-]++|-(?!->))*+-->)*+"
    rb"<!DOCTYPE",
    re.IGNORECASE,
)


def _doctype_in_prolog(data: bytes) -> bool:
    """True if a DOCTYPE appears before the first element (case-insensitive)."""
    return _DOCTYPE_IN_PROLOG.match(data) is not None


_SUPPORTED_MAJORS = frozenset({1, 2, 3, 4})

_tls = threading.local()


def make_parser() -> etree.XMLParser:
    """Return a new lxml parser with every dangerous feature switched off explicitly."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
        strip_cdata=True,
        remove_blank_text=True,
        recover=False,
    )


def _parser() -> etree.XMLParser:
    # lxml parser objects are not thread-safe; one per thread is cheap.
    p = getattr(_tls, "parser", None)
    if p is None:
        p = _tls.parser = make_parser()
    return p


def _check_version(version: str | None) -> None:
    if version is None:
        return  # lenient: many real servers omit it; the structure decides
    try:
        major = int(version.strip().split(".", 1)[0])
    except ValueError:
        raise VastError(
            VastErrorCode.VERSION_NOT_SUPPORTED, f"bad version {version!r}", reason="version"
        ) from None
    if major not in _SUPPORTED_MAJORS:
        raise VastError(
            VastErrorCode.VERSION_NOT_SUPPORTED,
            f"unsupported version {version!r}",
            reason="version",
        )


def parse_vast_tree(data: bytes | str) -> etree._Element:
    """Parse bytes into an lxml root with the hardened parser.

    Raises :class:`VastError` code 100 for empty input, any DOCTYPE/DTD, or
    malformed XML. Never expands entities and never touches the network.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data or data.isspace():
        raise VastError(VastErrorCode.XML_PARSE_ERROR, "empty document", reason="empty")
    if _doctype_in_prolog(data):
        raise VastError(VastErrorCode.XML_PARSE_ERROR, "DOCTYPE/DTD not allowed", reason="doctype")
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise VastError(
            VastErrorCode.XML_PARSE_ERROR, f"malformed XML: {exc}", reason="malformed"
        ) from None
    # Second line of defence for encodings the byte scan cannot see (UTF-16):
    # the parser still refused to expand anything, and we still refuse the doc.
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise VastError(VastErrorCode.XML_PARSE_ERROR, "DOCTYPE/DTD not allowed", reason="doctype")
    return root


def parse_vast(data: bytes | str) -> VastDocument:
    """Parse one VAST response into a :class:`VastDocument`.

    Raises :class:`VastError`: 100 for malformed XML or any DOCTYPE, 101 when
    the root is not ``VAST``/``VideoAdServingTemplate``, 102 for a version
    outside 1.x-4.x. Ads that are neither InLine nor Wrapper are skipped.
    """
    root = parse_vast_tree(data)
    tag = root.tag
    name = tag[tag.find("}") + 1 :]  # the local name; the root is always an element
    if name == "VAST":
        version = root.get("version")
        _check_version(version)
    elif name == "VideoAdServingTemplate":
        version = "1.0"
    else:
        raise VastError(
            VastErrorCode.SCHEMA_VALIDATION_ERROR, f"root element is {name!r}", reason="root"
        )
    return walk_document(root, version)
