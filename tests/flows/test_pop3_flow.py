"""POP3 and client auto-configuration through the real service, driven by real clients.

One ``twistd -n continuity`` for the module with ``pop3`` (STLS), ``pop3s``
(implicit TLS) and ``http``; each test has its own user, whose INBOX is
filled by another Maildir writer (the mail store used from this process, as
any Maildir tool could). Clients: Python's poplib, curl (pop3:// and
pop3s://, and the autoconfig URLs), fetchmail (STLS, to an MDA) and getmail6
(into a Maildir).
"""

from __future__ import annotations

import getpass
import itertools
import os
import poplib
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support import CLI, default_sections, free_port, render_config

from service import Service, wait_until

from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore

PASSWORD = "Secret123"
_users = itertools.count(1)


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (f"From: alice@sender.example\r\nTo: someone@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@sender.example>\r\n\r\n").encode() + body


class POP3Service:
    """The running service, its ports, continuityctl and the mail store on its data_dir."""

    def __init__(self, root: Path):
        self.pop3, self.pop3s, self.http = free_port(), free_port(), free_port()
        sections = default_sections(listen={
            "pop3": f"tcp:{self.pop3}:interface=127.0.0.1",
            "pop3s": f"tcp:{self.pop3s}:interface=127.0.0.1",
            "http": f"tcp:{self.http}:interface=127.0.0.1",
        })
        self.config = root / "c.toml"
        self.config.write_text(render_config(sections))
        self.cli = CLI(self.config)
        self.store = MaildirStore(str(root / "var" / "mail"), hostname="flow.test")
        self.service = Service(self.config)

    def user(self, *messages: bytes) -> str:
        """A new user with ``messages`` in INBOX."""
        address = f"user{next(_users)}@example.com"
        result = self.cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        for content in messages:
            self.store.deliver(parse_address(address), content)
        return address

    def inbox(self, address: str):
        return self.store.get_messages(parse_address(address))


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop3")
    service = POP3Service(root)
    assert service.cli("domain", "add", "example.com", "--upstream", "127.0.0.1:9").returncode == 0
    service.service.start(wait_ports=(service.pop3, service.pop3s, service.http))
    yield service
    code = service.service.stop()
    log = service.service.log()
    assert code in (0, -15) and "Server Shut Down." in log, log
    assert "Traceback" not in log, log


def insecure() -> ssl.SSLContext:
    """The service's certificate is self-signed (generated in data_dir)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def stls_client(pop: POP3Service, address: str | None = None) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", pop.pop3, timeout=20)
    client.stls(insecure())
    if address:
        client.user(address)
        client.pass_(PASSWORD)
    return client


# -- poplib ---------------------------------------------------------------------------------------


def test_poplib_session_over_stls(pop):
    """poplib with STLS: STAT, LIST, UIDL, TOP, RETR, DELE and QUIT remove exactly the deleted message."""
    first, second = message("first"), message("second", b".dotted\r\nline\r\n")
    address = pop.user(first, second)
    client = stls_client(pop, address)
    assert client.stat() == (2, len(first) + len(second))
    assert client.list()[1] == [b"1 %d" % len(first), b"2 %d" % len(second)]
    uidls = client.uidl()[1]
    assert len({line.split()[1] for line in uidls}) == 2
    assert client.top(1, 0)[1][-1] == b""
    response, lines, octets = client.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == second and octets == len(second)
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    (left,) = pop.inbox(address)
    assert left.has_flag("S") and b"second" in pop.store.read_message(left)
    again = stls_client(pop, address)
    assert again.uidl()[1] == [b"1 " + uidls[1].split()[1]]  # UIDL stable across sessions
    again.quit()


def test_poplib_over_implicit_tls(pop):
    """pop3s: TLS from the first octet, USER/PASS at once, no STLS offered."""
    address = pop.user(message("implicit"))
    client = poplib.POP3_SSL("127.0.0.1", pop.pop3s, context=insecure(), timeout=20)
    assert "STLS" not in client.capa() and "USER" in client.capa()
    client.user(address)
    client.pass_(PASSWORD)
    assert client.stat()[0] == 1
    client.quit()


def test_plaintext_login_refused_before_stls(pop):
    """Before STLS, CAPA offers no USER/SASL and USER is refused with [AUTH]."""
    address = pop.user()
    client = poplib.POP3("127.0.0.1", pop.pop3, timeout=20)
    capabilities = client.capa()
    assert "STLS" in capabilities and "USER" not in capabilities and "SASL" not in capabilities
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.user(address)
    client.quit()


def test_second_session_is_in_use_until_the_first_is_gone(pop):
    """A second session gets -ERR [IN-USE]; once the first connection drops, logging in works."""
    address = pop.user(message("locked"))
    first = stls_client(pop, address)
    second = stls_client(pop)
    second.user(address)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    first.close()  # no QUIT: the lock goes with the connection, nothing is changed

    def logged_in() -> bool:
        try:
            second.user(address)
            second.pass_(PASSWORD)
            return True
        except poplib.error_proto:
            return False

    wait_until(logged_in, timeout=10, what="the lock to go with the first connection")
    assert second.stat()[0] == 1
    second.quit()


def test_wrong_password_is_refused_with_auth_code(pop):
    """A wrong password gets -ERR [AUTH] after the throttle's delay, and the connection stays."""
    address = pop.user()
    client = stls_client(pop)
    client.user(address)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("Wrong1234")
    assert client.noop is not None and client.capa()
    client.quit()


def test_commands_pipelined_with_stls_are_not_answered(pop):
    """USER/PASS sent in the same packet as STLS are not answered, before or after the handshake."""
    address = pop.user()
    with socket.create_connection(("127.0.0.1", pop.pop3), timeout=20) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        raw.sendall(f"STLS\r\nUSER {address}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"+OK Begin TLS")
        tls = insecure().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"STAT\r\n")
        assert tls.recv(1024).startswith(b"-ERR Not logged in")
        tls.sendall(b"QUIT\r\n")
        tls.recv(1024)


def test_auth_plain_with_initial_response(pop):
    """AUTH PLAIN with an initial response (RFC 5034) logs in."""
    import base64

    address = pop.user(message("sasl"))
    client = stls_client(pop)
    token = base64.b64encode(f"\0{address}\0{PASSWORD}".encode()).decode()
    assert client._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    assert client.stat()[0] == 1
    client.quit()


def test_large_message_is_streamed_whole(pop):
    """A 12 MB message with many dot lines arrives intact and its size matches LIST."""
    body = b"".join(b".line %d of a big message\r\n" % i for i in range(400_000))
    big = message("big", body)
    address = pop.user(big)
    client = stls_client(pop, address)
    size = int(client.list(1).split()[2])
    response, lines, _ = client.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == big and size == len(big)
    client.quit()


# -- curl -------------------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", *args], capture_output=True,
                          timeout=60)


def test_curl_lists_and_fetches_over_stls(pop):
    """curl pop3:// with --ssl-reqd (STLS): LIST, then RETR of one message."""
    first = message("curl one")
    address = pop.user(first, message("curl two"))
    url = f"pop3://127.0.0.1:{pop.pop3}/"
    listing = curl("--ssl-reqd", "--insecure", "--user", f"{address}:{PASSWORD}", url)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split(b"\r\n")[:2] == [b"1 %d" % len(first), b"2 %d" % len(message("curl two"))]
    fetched = curl("--ssl-reqd", "--insecure", "--user", f"{address}:{PASSWORD}", url + "1")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == first


def test_curl_fetches_over_pop3s(pop):
    """curl pop3s:// (implicit TLS) fetches a message; without TLS curl cannot log in."""
    content = message("curl implicit")
    address = pop.user(content)
    fetched = curl("--insecure", "--user", f"{address}:{PASSWORD}", f"pop3s://127.0.0.1:{pop.pop3s}/1")
    assert fetched.returncode == 0 and fetched.stdout == content, fetched.stderr
    plain = curl("--user", f"{address}:{PASSWORD}", f"pop3://127.0.0.1:{pop.pop3}/1")
    assert plain.returncode != 0


# -- fetchmail and getmail6 --------------------------------------------------------------------------


def test_fetchmail_retrieves_over_stls_to_an_mda(pop, tmp_path):
    """fetchmail with mandatory STLS hands every message to an MDA and deletes it from the server."""
    contents = [message("fetchmail one"), message("fetchmail two", b".dot\r\n")]
    address = pop.user(*contents)
    out = tmp_path / "delivered"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n"
        f"poll 127.0.0.1 with proto POP3 port {pop.pop3} uidl\n"
        f"  user '{address}' there with password '{PASSWORD}' is '{getpass.getuser()}' here\n"
        f"  options sslproto 'TLS1.2+' no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat > $(mktemp -p {out})'\"\n")
    rc.chmod(0o600)
    env = {**os.environ, "FETCHMAILHOME": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(["fetchmail", "--fetchmailrc", str(rc), "--nodetach", "--verbose", "--nokeep"],
                            capture_output=True, timeout=60, env=env, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STLS" in result.stdout + result.stderr
    delivered = sorted(path.read_bytes() for path in out.iterdir())
    assert len(delivered) == 2
    for content in contents:
        assert any(content.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in got.replace(b"\r\n", b"\n")
                   for got in delivered)
    assert pop.inbox(address) == ()


@pytest.fixture
def local_maildir():
    """An empty Maildir getmail may write to; as root, owned by nobody (getmail refuses to deliver as root)."""
    parent = Path(tempfile.mkdtemp(prefix="continuity-getmail-"))
    parent.chmod(0o755)  # pytest's tmp_path is 0700: nobody could not reach it
    maildir = parent / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    user = ""
    if os.geteuid() == 0:
        user = "nobody"
        for path in (maildir, *maildir.iterdir()):
            os.chown(path, pwd.getpwnam(user).pw_uid, -1)
    yield maildir, user
    shutil.rmtree(parent, ignore_errors=True)


def test_getmail_retrieves_into_a_maildir(pop, tmp_path, local_maildir):
    """getmail6 over pop3s puts every message into a local Maildir and deletes them on the server."""
    contents = [message("getmail one"), message("getmail two")]
    address = pop.user(*contents)
    maildir, user = local_maildir
    rc = tmp_path / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {pop.pop3s}\nusername = {address}\npassword = {PASSWORD}\n"
        f"[destination]\ntype = Maildir\npath = {maildir}/\n" + (f"user = {user}\n" if user else "") +
        "[options]\ndelete = true\nread_all = true\nverbose = 1\nmessage_log_syslog = false\n")
    result = subprocess.run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(rc)], capture_output=True,
                            timeout=60, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    got = [path.read_bytes() for path in (maildir / "new").iterdir()]
    assert len(got) == 2
    for content in contents:
        assert any(content.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in body.replace(b"\r\n", b"\n")
                   for body in got)
    assert pop.inbox(address) == ()


# -- auto-configuration --------------------------------------------------------------------------------


def test_curl_gets_mozilla_autoconfig(pop):
    """curl GET config-v1.1.xml: the pop3 and pop3s listeners on our hostname with the address."""
    result = curl("--fail", "-H", "Host: autoconfig.example.com",
                  f"http://127.0.0.1:{pop.http}/mail/config-v1.1.xml?emailaddress=bob%40example.com")
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout)
    servers = [(s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"),
                s.findtext("username")) for s in root.iter("incomingServer")]
    assert servers == [("pop3", "mx.example.test", str(pop.pop3s), "SSL", "bob@example.com"),
                       ("pop3", "mx.example.test", str(pop.pop3), "STARTTLS", "bob@example.com")]
    assert root.find("emailProvider/outgoingServer") is None  # no submission listener configured


def test_curl_posts_outlook_autodiscover(pop):
    """curl POST autodiscover.xml: POP3 protocols with SSL and TLS encryption for the address."""
    body = ('<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
            'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>bob@example.com</EMailAddress>'
            '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/'
            '2006a</AcceptableResponseSchema></Request></Autodiscover>')
    result = curl("--fail", "-H", "Content-Type: text/xml", "--data-binary", body,
                  f"http://127.0.0.1:{pop.http}/Autodiscover/Autodiscover.xml")
    assert result.returncode == 0, result.stderr
    ns = {"o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    protocols = [(p.findtext("o:Type", namespaces=ns), p.findtext("o:Port", namespaces=ns),
                  p.findtext("o:Encryption", namespaces=ns), p.findtext("o:LoginName", namespaces=ns))
                 for p in ET.fromstring(result.stdout).iter(f"{{{ns['o']}}}Protocol")]
    assert protocols == [("POP3", str(pop.pop3s), "SSL", "bob@example.com"),
                         ("POP3", str(pop.pop3), "TLS", "bob@example.com")]


def test_autodiscover_with_entities_is_refused(pop):
    """An XXE attempt gets the Invalid Request error, never a file's content."""
    body = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            "<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>")
    result = curl("--data-binary", body, f"http://127.0.0.1:{pop.http}/autodiscover/autodiscover.xml")
    assert b"<ErrorCode>600</ErrorCode>" in result.stdout and b"root:" not in result.stdout
