"""The ``http`` listener's site: one root resource with a child per feature.

Now the root holds client auto-configuration (:mod:`continuity.web.autoconfig`);
the admin API, the control panel and webmail are to be added as further
children of the same root (``root.putChild(b"api", ...)``), so they share one
listener, one request class and its limits.

The request class hides the Twisted version (``Server: continuity``) and
bounds request bodies: a body above :data:`MAX_BODY` octets is not stored
(neither in memory nor in a temporary file) and the request is answered 413.
"""

from __future__ import annotations

from twisted.web import pages, resource, server

from continuity.config import Config
from continuity.web.autoconfig import MozillaAutoconfig, OutlookAutodiscover
from continuity.web.listeners import client_services

#: The largest request body accepted (an Autodiscover request is a few hundred octets).
MAX_BODY = 64 * 1024


class _Discarded:
    """Stands in for the body of a request that is too large: takes octets, keeps none."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: int) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


class Directory(resource.Resource):
    """A path segment that only holds children; anything else under it is 404."""

    def getChild(self, path: bytes, request) -> resource.IResource:
        return pages.notFound()

    def render(self, request) -> bytes:
        return pages.notFound().render(request)


class CaseInsensitiveDirectory(Directory):
    """A directory whose children are found whatever the letter case (``/Autodiscover/Autodiscover.xml``)."""

    def putChild(self, path: bytes, child: resource.IResource) -> None:
        super().putChild(path.lower(), child)

    def getChild(self, path: bytes, request) -> resource.IResource:
        child = self.children.get(path.lower())
        return child if child is not None else pages.notFound()


class ContinuityRequest(server.Request):
    """A request with a bounded body and no version in the ``Server`` header."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        if self.content is not None and self.content.tell() + len(data) > MAX_BODY:
            self._refuse_body()  # chunked: no length announced
            return
        super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        self.too_large = True
        if self.content is not None and not isinstance(self.content, _Discarded):
            self.content.close()
        self.content = _Discarded()

    def render(self, resrc: resource.IResource) -> None:
        self.setHeader(b"server", b"continuity")
        if self.too_large:
            resrc = pages.errorPage(413, "Request Entity Too Large", "The request body is too large.")
        super().render(resrc)


class Root(Directory):
    """``/``: nothing of its own yet (404); the features are its children."""


def build_root(config: Config) -> Root:
    """The resource tree for ``config``."""
    services = client_services(config.server.hostname, config.listen)
    root = Root()
    mozilla = MozillaAutoconfig(services, config.server.hostname)
    mail = Directory()
    mail.putChild(b"config-v1.1.xml", mozilla)
    root.putChild(b"mail", mail)
    well_known = Directory()
    autoconfig = Directory()
    autoconfig.putChild(b"mail", mail)
    well_known.putChild(b"autoconfig", autoconfig)
    root.putChild(b".well-known", well_known)
    autodiscover = CaseInsensitiveDirectory()
    autodiscover.putChild(b"autodiscover.xml", OutlookAutodiscover(services))
    root.putChild(b"autodiscover", autodiscover)
    root.putChild(b"Autodiscover", autodiscover)
    return root


def build_site(config: Config, reactor) -> server.Site:
    """The ``http`` listener's factory."""
    return server.Site(build_root(config), requestFactory=ContinuityRequest, reactor=reactor)
