"""The real service with its ``imap`` (STARTTLS) and ``imaps`` listeners, shared by the IMAP flow modules."""

from __future__ import annotations

import imaplib
import ssl
from pathlib import Path

from service import Service

from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore

PASSWORD = "Secret123"


class IMAPService:
    """``twistd continuity`` on 127.0.0.1 with imap and imaps; ``users`` get a password each."""

    def __init__(self, tmp_path: Path, users: tuple[str, ...]):
        from support import CLI, default_sections, free_port, render_config

        self.imap_port, self.imaps_port = free_port(), free_port()
        sections = default_sections(listen={"imap": f"tcp:{self.imap_port}:interface=127.0.0.1",
                                            "imaps": f"tcp:{self.imaps_port}:interface=127.0.0.1"})
        self.config = tmp_path / "c.toml"
        self.config.write_text(render_config(sections))
        self.data_dir = tmp_path / "var"
        self.cli = CLI(self.config)
        result = self.cli("domain", "add", "example.com", "--upstream", "127.0.0.1:9")
        assert result.returncode == 0, result.stderr
        for local in users:
            result = self.cli("user", "add", f"{local}@example.com", "--password-stdin", stdin=f"{PASSWORD}\n")
            assert result.returncode == 0, result.stderr
        self.service = Service(self.config)
        #: Another Maildir writer on the same tree (as procmail or Dovecot's LDA would be).
        self.store = MaildirStore(str(self.data_dir / "mail"), hostname="other-tool")

    def start(self) -> IMAPService:
        self.service.start(wait_ports=(self.imap_port, self.imaps_port))
        return self

    def stop(self) -> None:
        code = self.service.stop()
        log = self.service.log()
        assert code in (0, -15) and "Traceback" not in log, log

    @property
    def certificate(self) -> Path:
        return self.data_dir / "tls" / "selfsigned-cert.pem"

    def deliver(self, local: str, message: bytes, folder: str = "INBOX", flags: str = "") -> None:
        self.store.deliver(parse_address(f"{local}@example.com"), message, folder, flags)

    def imaps(self, local: str) -> imaplib.IMAP4_SSL:
        """A logged-in imaplib session over implicit TLS."""
        client = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=insecure_context(), timeout=20)
        client.login(f"{local}@example.com", PASSWORD)
        return client


def insecure_context() -> ssl.SSLContext:
    """The service's certificate is self-signed for mx.example.test: encrypt, don't verify."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def message(subject: str, body: str = "Hello there.", sender: str = "alice@sender.example") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@sender.example>\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
            f"\r\n{body}\r\n").encode()
