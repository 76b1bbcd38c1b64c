"""Client auto-configuration over the http site in memory: Mozilla autoconfig, Outlook Autodiscover, limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from continuity.config import parse_config
from continuity.web.autoconfig import (
    AUTODISCOVER_RESPONSE,
    OUTLOOK_RESPONSE,
    AutodiscoverRequestError,
    autodiscover_settings,
    mozilla_config,
    parse_autodiscover_request,
)
from continuity.web.listeners import MailService, client_services, endpoint_port
from continuity.web.root import MAX_BODY, build_site

LISTEN = {"smtp": "tcp:25", "imap": "tcp:143", "imaps": "tcp:993", "pop3": "tcp:110", "pop3s": "",
          "submission": "tcp:port=587:interface=0.0.0.0", "submissions": "", "http": "tcp:8080"}
REQUEST_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
NS = {"a": AUTODISCOVER_RESPONSE, "o": OUTLOOK_RESPONSE}


def autodiscover_body(address: str, schema: str = OUTLOOK_RESPONSE) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_SCHEMA}"><Request>'
            f"<EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
            "</Request></Autodiscover>").encode()


class Response:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status, *headers = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in headers)}

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


@pytest.fixture
def site():
    config = parse_config({"server": {"hostname": "mx.example.test", "data_dir": "var"}, "listen": LISTEN},
                          "/nonexistent/c.toml")
    return build_site(config, MemoryReactorClock())


def http(site, request: bytes) -> Response:
    channel = site.buildProtocol(IPv4Address("TCP", "198.51.100.4", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request)
    return Response(transport.value())


def get(site, path: str, host: str = "autoconfig.example.com") -> Response:
    return http(site, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


def post(site, path: str, body: bytes) -> Response:
    head = f"POST {path} HTTP/1.1\r\nHost: autodiscover.example.com\r\nContent-Type: text/xml\r\n"
    return http(site, (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)


# -- listeners ----------------------------------------------------------------------------------


@pytest.mark.parametrize("description, port", [("tcp:993", 993), ("tcp:port=995:interface=127.0.0.1", 995),
                                               ("tcp:143:interface=\\:\\:1", 143), ("ssl:993:privateKey=k", 993),
                                               ("tcp6:110", 110), ("587", 587), ("unix:/run/x.sock", None),
                                               ("systemd:domain=INET:index=0", None), ("tcp:0", None),
                                               ("tcp:interface=1.2.3.4", None)])
def test_endpoint_port_is_read_from_the_description(description, port):
    """The port of tcp/tcp6/ssl endpoint descriptions, None when there is none to tell."""
    assert endpoint_port(description) == port


def test_only_enabled_client_listeners_are_offered_implicit_tls_first():
    """Enabled client listeners in preference order; smtp (the MX) and disabled ones are left out."""
    services = client_services("mx.example.test", LISTEN)
    assert [(s.protocol, s.port, s.socket_type) for s in services] == [
        ("imap", 993, "SSL"), ("imap", 143, "STARTTLS"), ("pop3", 110, "STARTTLS"), ("smtp", 587, "STARTTLS")]


# -- Mozilla autoconfig ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_mozilla_autoconfig_lists_the_enabled_listeners(site, path):
    """config-v1.1.xml at both paths: our hostname, each enabled listener with port and socket type."""
    response = get(site, path + "?emailaddress=Bob%40Example.com")
    assert response.status == 200 and response.headers["content-type"].startswith("application/xml")
    provider = response.xml().find("emailProvider")
    assert provider.get("id") == "example.com" and provider.findtext("domain") == "example.com"
    incoming = [(s.get("type"), s.findtext("port"), s.findtext("socketType"), s.findtext("username"),
                 s.findtext("hostname")) for s in provider.findall("incomingServer")]
    assert incoming == [("imap", "993", "SSL", "bob@example.com", "mx.example.test"),
                        ("imap", "143", "STARTTLS", "bob@example.com", "mx.example.test"),
                        ("pop3", "110", "STARTTLS", "bob@example.com", "mx.example.test")]
    (outgoing,) = provider.findall("outgoingServer")
    assert (outgoing.findtext("port"), outgoing.findtext("socketType")) == ("587", "STARTTLS")
    assert {s.findtext("authentication") for s in provider.iter() if s.find("authentication") is not None} == {
        "password-cleartext"}


def test_mozilla_autoconfig_without_address_uses_the_placeholder_and_host(site):
    """Without ?emailaddress= the user name is %EMAILADDRESS% and the domain comes from the Host."""
    provider = get(site, "/mail/config-v1.1.xml", host="autoconfig.customer.example").xml().find("emailProvider")
    assert provider.get("id") == "customer.example"
    assert {s.findtext("username") for s in provider.findall("incomingServer")} == {"%EMAILADDRESS%"}


def test_mozilla_autoconfig_ignores_an_invalid_address(site):
    """A malformed emailaddress is ignored rather than echoed."""
    response = get(site, "/mail/config-v1.1.xml?emailaddress=%3Cscript%3E")
    assert response.status == 200 and b"script" not in response.body


def test_unknown_domains_get_the_same_answer(site):
    """Every domain gets the same settings: the answer never tells which domains are hosted."""
    first = get(site, "/mail/config-v1.1.xml?emailaddress=a%40hosted.example").xml()
    second = get(site, "/mail/config-v1.1.xml?emailaddress=a%40unknown.example").xml()
    servers = [ET.tostring(s) for s in first.iter("incomingServer")]
    assert servers == [ET.tostring(s).replace(b"unknown", b"hosted") for s in second.iter("incomingServer")]


def test_xml_output_escapes_everything():
    """Text and attributes placed in the XML are escaped (a hostile name cannot inject markup)."""
    services = [MailService("imap", 'h<&">', 993, "SSL")]
    document = mozilla_config(services, 'd"<&', 'u<&>@x')
    root = ET.fromstring(document)
    assert root.find("emailProvider").get("id") == 'd"<&'
    assert root.find(".//hostname").text == 'h<&">' and root.find(".//username").text == "u<&>@x"
    assert ET.fromstring(autodiscover_settings(services, "a<b>@x")).find(".//o:LoginName", NS).text == "a<b>@x"


# -- Outlook Autodiscover ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"])
def test_autodiscover_answers_with_the_protocols(site, path):
    """A POX request gets one Protocol per enabled listener with the address as LoginName."""
    response = post(site, path, autodiscover_body("Bob@Example.com"))
    assert response.status == 200
    root = response.xml()
    assert root.tag == f"{{{AUTODISCOVER_RESPONSE}}}Autodiscover"
    account = root.find("o:Response/o:Account", NS)
    assert account.findtext("o:AccountType", namespaces=NS) == "email"
    assert account.findtext("o:Action", namespaces=NS) == "settings"
    protocols = [(p.findtext("o:Type", namespaces=NS), p.findtext("o:Port", namespaces=NS),
                  p.findtext("o:Encryption", namespaces=NS), p.findtext("o:LoginName", namespaces=NS),
                  p.findtext("o:Server", namespaces=NS)) for p in account.findall("o:Protocol", NS)]
    assert protocols == [("IMAP", "993", "SSL", "bob@example.com", "mx.example.test"),
                         ("IMAP", "143", "TLS", "bob@example.com", "mx.example.test"),
                         ("POP3", "110", "TLS", "bob@example.com", "mx.example.test"),
                         ("SMTP", "587", "TLS", "bob@example.com", "mx.example.test")]


def test_autodiscover_refuses_entities(site):
    """A request with a DTD or entities (billion laughs, XXE) is an Invalid Request, never expanded."""
    body = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>")
    response = post(site, "/autodiscover/autodiscover.xml", body)
    assert response.status == 200
    assert response.xml().findtext("a:Response/a:Error/a:ErrorCode", namespaces=NS) == "600"
    assert b"root:" not in response.body


@pytest.mark.parametrize("body", [b"not xml", b"<Autodiscover/>", autodiscover_body("no-at-sign")])
def test_autodiscover_malformed_request_is_error_600(body):
    """Malformed XML, no EMailAddress or an invalid one: error 600 Invalid Request."""
    with pytest.raises(AutodiscoverRequestError) as caught:
        parse_autodiscover_request(body)
    assert caught.value.code == 600


def test_autodiscover_other_schema_is_error_601():
    """A request for another response schema (ActiveSync's mobilesync) gets 601."""
    schema = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    with pytest.raises(AutodiscoverRequestError) as caught:
        parse_autodiscover_request(autodiscover_body("bob@example.com", schema))
    assert caught.value.code == 601


def test_autodiscover_get_is_not_allowed(site):
    """Autodiscover is POST only."""
    assert get(site, "/autodiscover/autodiscover.xml").status == 405


def test_oversized_body_is_refused_413(site):
    """A request body above the limit is refused with 413 and never stored."""
    response = post(site, "/autodiscover/autodiscover.xml", b"x" * (MAX_BODY + 1))
    assert response.status == 413


def test_oversized_chunked_body_is_refused_413(site):
    """A chunked body that grows past the limit is refused with 413 too."""
    chunk = b"x" * 0x8000
    body = b"".join(b"8000\r\n" + chunk + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    head = b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    response = http(site, head + b"Connection: close\r\n\r\n" + body)
    assert response.status == 413


def test_server_header_hides_the_version(site):
    """The Server header names continuity, not Twisted and its version."""
    assert get(site, "/mail/config-v1.1.xml").headers["server"] == "continuity"


def test_root_and_unknown_paths_are_404(site):
    """The root has no page of its own yet; unknown paths are 404."""
    assert get(site, "/").status == 404
    assert get(site, "/nothing/here").status == 404
