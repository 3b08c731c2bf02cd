"""Type stub of the compiled VAST tree walk (``_walk.pyx``)."""

from lxml import etree

from .model import VastDocument

def parse_duration(value: str | None) -> float | None: ...
def walk_document(root: etree._Element, version: str | None) -> VastDocument: ...
