"""Client auto-configuration: Mozilla autoconfig and Outlook Autodiscover (POX).

Users set up Thunderbird, K-9/Thunderbird for Android, Evolution, Apple
Mail's and Outlook's wizards with an address and a password; the wizard asks
us where the servers are:

- **Mozilla autoconfig** (``config-v1.1.xml``, the ISP form of Thunderbird's
  autoconfiguration): ``GET /mail/config-v1.1.xml`` (at the host
  ``autoconfig.DOMAIN``) and ``GET /.well-known/autoconfig/mail/config-v1.1.xml``
  (at ``DOMAIN``), with ``?emailaddress=`` naming the user.
- **Outlook Autodiscover, POX** (MS-OXDSCLI, the "outlook" response schema
  2006a): ``POST /autodiscover/autodiscover.xml`` (any letter case) with an
  ``<EMailAddress>`` in the request.

Both describe the enabled client listeners of
:func:`~continuity.web.listeners.client_services` at ``server.hostname``,
with the full address as the user name and cleartext passwords (inside TLS).

Unknown domains: every request gets the same settings whatever its domain,
and no request touches the directory, so the answers never tell which domains
or users are hosted (a 404 for unknown domains would). A client that asks for
a domain we don't host just learns our servers, which it can learn from DNS.

XML in: the Autodiscover request is parsed with :mod:`defusedxml` (no DTDs,
no entities, no external references) and bounded in size by the site. XML
out: built with ElementTree, which escapes every text and attribute.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_untrusted_xml
from twisted.logger import Logger
from twisted.web import pages, resource

from continuity.envelope import normalise_domain, parse_address
from continuity.errors import InvalidAddress
from continuity.web.listeners import MailService

AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
EMAIL_PLACEHOLDER = "%EMAILADDRESS%"
XML_CONTENT_TYPE = b"application/xml; charset=utf-8"


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _child(parent: ET.Element, tag: str, text: str | int | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = str(text)
    return element


def mozilla_config(services: Sequence[MailService], domain: str, address: str | None) -> bytes:
    """The ``clientConfig`` document (version 1.1) for ``domain``.

    :param address: the user's address when the request named one, else the
        ``%EMAILADDRESS%`` placeholder is used (the client fills it in).
    """
    root = ET.Element("clientConfig", version="1.1")
    provider = _child(root, "emailProvider", id=domain)
    _child(provider, "domain", domain)
    _child(provider, "displayName", f"{domain} mail (continuity)")
    _child(provider, "displayShortName", domain)
    username = address or EMAIL_PLACEHOLDER
    for service in services:
        if service.protocol == "smtp":
            server = _child(provider, "outgoingServer", type="smtp")
        else:
            server = _child(provider, "incomingServer", type=service.protocol)
        _child(server, "hostname", service.hostname)
        _child(server, "port", service.port)
        _child(server, "socketType", service.socket_type)
        _child(server, "authentication", "password-cleartext")
        _child(server, "username", username)
    return _xml(root)


def autodiscover_settings(services: Sequence[MailService], address: str) -> bytes:
    """The Outlook (POX, schema 2006a) response with one ``Protocol`` per service.

    ``Encryption`` says ``SSL`` (implicit TLS) or ``TLS`` (STARTTLS); Outlook
    then ignores ``SSL``, which stays ``on`` for older clients.
    """
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE)
    response = _child(root, "Response", xmlns=OUTLOOK_RESPONSE)
    user = _child(response, "User")
    _child(user, "DisplayName", address)
    _child(user, "AutoDiscoverSMTPAddress", address)
    account = _child(response, "Account")
    _child(account, "AccountType", "email")
    _child(account, "Action", "settings")
    for service in services:
        protocol = _child(account, "Protocol")
        _child(protocol, "Type", {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}[service.protocol])
        _child(protocol, "Server", service.hostname)
        _child(protocol, "Port", service.port)
        _child(protocol, "DomainRequired", "off")
        _child(protocol, "LoginName", address)
        _child(protocol, "SPA", "off")
        _child(protocol, "SSL", "on")
        _child(protocol, "Encryption", "SSL" if service.socket_type == "SSL" else "TLS")
        _child(protocol, "AuthRequired", "on")
        if service.protocol == "smtp":
            _child(protocol, "UsePOPAuth", "off")
            _child(protocol, "SMTPLast", "off")
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    """An Autodiscover error response (600 invalid request, 601 schema not available)."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE)
    response = _child(root, "Response")
    error = _child(response, "Error", Time=time.strftime("%H:%M:%S", time.gmtime()), Id=str(uuid.uuid4().int % 10**10))
    _child(error, "ErrorCode", code)
    _child(error, "Message", message)
    _child(error, "DebugData", "")
    return _xml(root)


class AutodiscoverRequestError(Exception):
    """The POST body is not an Autodiscover request we can answer."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_autodiscover_request(body: bytes) -> str:
    """The normalised address of an Autodiscover request body.

    :raises AutodiscoverRequestError: 600 for malformed XML, a DTD or entities, or
        no valid ``EMailAddress``; 601 when only other response schemas (e.g.
        ActiveSync's ``mobilesync``) are acceptable.
    """
    try:
        root = parse_untrusted_xml(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise AutodiscoverRequestError(600, "Invalid Request") from None
    address = schema = None
    for element in root.iter():
        name = _local_name(element.tag) if isinstance(element.tag, str) else ""
        if name == "EMailAddress" and address is None:
            address = (element.text or "").strip()
        elif name == "AcceptableResponseSchema" and schema is None:
            schema = (element.text or "").strip()
    if schema and schema != OUTLOOK_RESPONSE:
        raise AutodiscoverRequestError(601, "Provider is not available for the requested schema")
    try:
        return str(parse_address(address or ""))
    except InvalidAddress:
        raise AutodiscoverRequestError(600, "Invalid Request") from None


def _xml_reply(request, body: bytes) -> bytes:
    request.setHeader(b"content-type", XML_CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body


class MozillaAutoconfig(resource.Resource):
    """``config-v1.1.xml``: the settings for the domain of ``?emailaddress=``, else of the Host."""

    isLeaf = True
    log = Logger()

    def __init__(self, services: Sequence[MailService], default_domain: str):
        super().__init__()
        self._services = tuple(services)
        self._default_domain = default_domain

    def render_GET(self, request) -> bytes:
        address = self._address(request)
        domain = address.split("@", 1)[1] if address else self._host_domain(request)
        return _xml_reply(request, mozilla_config(self._services, domain, address))

    def _address(self, request) -> str | None:
        """The valid address of ``?emailaddress=``, or None (an invalid one is ignored)."""
        values = request.args.get(b"emailaddress") or []
        if not values:
            return None
        try:
            return str(parse_address(values[0].decode("utf-8")))
        except (UnicodeDecodeError, InvalidAddress):
            return None

    def _host_domain(self, request) -> str:
        """The domain the client asked at: ``autoconfig.DOMAIN`` or ``DOMAIN``, else our default."""
        host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        if host.startswith("autoconfig."):
            host = host[len("autoconfig."):]
        try:
            return normalise_domain(host)
        except InvalidAddress:
            return self._default_domain

    render_HEAD = render_GET


class OutlookAutodiscover(resource.Resource):
    """``autodiscover.xml``: answers a POX request with the settings for its ``EMailAddress``."""

    isLeaf = True
    log = Logger()

    def __init__(self, services: Sequence[MailService]):
        super().__init__()
        self._services = tuple(services)

    def render(self, request) -> bytes:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return pages.errorPage(405, "Method Not Allowed", "Autodiscover requests are POSTed.").render(request)
        return self.render_POST(request)

    def render_POST(self, request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        try:
            address = parse_autodiscover_request(body)
        except AutodiscoverRequestError as error:
            self.log.info("autodiscover request refused ({code}) from {ip}", code=error.code,
                          ip=request.getClientAddress().host if request.getClientAddress() else "?")
            # Exchange answers errors inside a 200 response; Outlook reads the code there.
            return _xml_reply(request, autodiscover_error(error.code, error.message))
        return _xml_reply(request, autodiscover_settings(self._services, address))
