"""Submission with AUTH over STARTTLS against Postfix's submission service (issues 5 and 6).

Load: 10 client sessions side by side (Python threads with :mod:`smtplib`),
each one connection that says EHLO, STARTTLS, EHLO, ``AUTH PLAIN`` as a user
of its own, then sends its share of 1,000 messages of 2 KB (``--quick``: 2
sessions, 20 messages)
to an outside address, and QUITs. The figure is messages per second **end to
end**: from the first connection until the ``smtp-sink`` behind the server
counted the last message, the same for both.

- **ours**: the ``submission`` listener; the users' domain is hosted (normal
  mode) and outside mail goes to ``[outbound] smarthost`` = our sink.
- **Postfix**: an isolated instance with a ``submission`` service in
  ``master.cf`` as Debian's commented example has it (``smtpd_tls_security_level
  = encrypt``, ``smtpd_sasl_auth_enable``, ``smtpd_tls_auth_only``, only
  authenticated clients relay), SASL through the auth socket of an isolated
  Dovecot (``smtpd_sasl_type = dovecot``), ``reject_sender_login_mismatch``
  as our sender rule, and ``relayhost`` = its own sink.

Both present the same self-signed certificate (EC P-256, made by our own
:func:`continuity.tls.generate_self_signed`), and both verify the same kind
of credential: our Argon2id hash (see :mod:`mailpair`).
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from email.utils import formatdate

from continuity.tls import generate_self_signed
from dovecot import Dovecot
from lab import SHORT_ROUNDS, Benchmark, Lab, Load, Sample, free_port, wait_for_port, wait_until
from mailpair import PASSWORD, add_users, dovecot_hashes
from ours import Ours
from postfix import Postfix
from procstat import cpu_seconds
from profiling import recording
from smtptools import Sink

MESSAGES = Load(full=1000, quick=20)
SESSIONS = Load(full=10, quick=2)
SIZE = 2048
DOMAIN = "submit.bench.test"
RECIPIENT = "someone@elsewhere.bench.test"
TIMEOUT = 600.0


class SubmissionPostfix(Postfix):
    """Postfix with a ``submission`` service on 127.0.0.1:``submission_port`` (the ``smtp`` one stays)."""

    def __init__(self, *args, submission_port: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.submission_port = submission_port

    def master_cf(self) -> str:
        options = {
            "syslog_name": "postfix/submission",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_tls_auth_only": "yes",
            "smtpd_client_restrictions": "permit_sasl_authenticated,reject",
            "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
            "smtpd_recipient_restrictions": "permit_sasl_authenticated,reject",
            "smtpd_sender_restrictions": "reject_sender_login_mismatch",
        }
        # tlsmgr: the TLS session cache and entropy smtpd asks for before it offers STARTTLS.
        service = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
        service += f"127.0.0.1:{self.submission_port} inet n - n - - smtpd\n"
        service += "".join(f"  -o {key}={value}\n" for key, value in options.items())
        return super().master_cf() + service

    def start(self, timeout: float = 30.0) -> SubmissionPostfix:
        super().start(timeout)
        wait_for_port(self.submission_port, timeout, what=f"postfix submission ({self.maillog})")
        return self


def message(sender: str, number: int) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{RECIPIENT}>\r\nSubject: submission {number}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{number}.{time.monotonic_ns()}@{DOMAIN}>\r\n\r\n").encode()
    line = b"y" * 78 + b"\r\n"
    return head + line * ((SIZE - len(head)) // len(line))


def submit(port: int, sender: str, count: int, errors: list) -> None:
    """One session: STARTTLS, AUTH PLAIN as ``sender``, ``count`` messages, QUIT."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.bench.test", timeout=120) as client:
            client.starttls(context=context)
            client.ehlo("client.bench.test")
            client.login(sender, PASSWORD)
            for number in range(count):
                client.sendmail(sender, [RECIPIENT], message(sender, number))
    except Exception as exc:  # reported by the round, with the others
        errors.append(f"{sender}: {type(exc).__name__}: {exc}")


class Submission(Benchmark):
    name = "submission"
    rounds = SHORT_ROUNDS
    figure = "submission with AUTH over STARTTLS"
    unit = "msg/s"
    bar = 1.0
    peer_label = "Postfix submission"

    def start(self, lab: Lab) -> None:
        sessions = SESSIONS.size(lab.quick)
        self.messages = MESSAGES.size(lab.quick) // sessions * sessions
        self.senders = [f"sender{number}@{DOMAIN}" for number in range(sessions)]
        root = lab.path(self.name)
        cert, key = root / "cert.pem", root / "key.pem"
        generate_self_signed("mx.bench.test", str(cert), str(key))
        key.chmod(0o644)  # a throw-away benchmark key, read by Postfix's smtpd as well
        stack = lab.benchmark_cleanup  # all stopped when this benchmark is done
        self.our_sink = stack.enter_context(Sink(lab.path(self.name, "sink-ours"), free_port()).started())
        self.peer_sink = stack.enter_context(Sink(lab.path(self.name, "sink-peer"), free_port()).started())
        self.service = stack.enter_context(Ours(
            lab.path(self.name, "ours"), {"submission": free_port()},
            tls={"certificate": str(cert), "key": str(key)},
            outbound={"smarthost": self.our_sink.address},
            limits={"messages_per_hour": 100_000}).started())
        self.service.add_domain(DOMAIN, self.our_sink.address)
        add_users(self.service, self.senders)
        dovecot_root = lab.path(self.name, "dovecot")
        auth_socket = dovecot_root / "auth-postfix"
        stack.enter_context(Dovecot(
            dovecot_root, free_port(), free_port(), {sender: PASSWORD for sender in self.senders},
            hashes=dovecot_hashes(self.senders),
            extra=f"service auth {{\n  unix_listener {auth_socket} {{\n    mode = 0666\n  }}\n}}\n").started())
        wait_until(auth_socket.exists, 30, "Dovecot's auth socket")
        logins = "".join(f"{sender} {sender}\n" for sender in self.senders)
        self.postfix = stack.enter_context(SubmissionPostfix(
            lab.path(self.name, "postfix"), free_port(), {
                "relayhost": f"[127.0.0.1]:{self.peer_sink.port}",
                "smtpd_tls_cert_file": str(cert),
                "smtpd_tls_key_file": str(key),
                "smtpd_sasl_type": "dovecot",
                "smtpd_sasl_path": str(auth_socket),
                "smtpd_sender_login_maps": "texthash:{conf}/senders",
            }, maps={"senders": logins}, submission_port=free_port()).started())

    def _round(self, port: int, sink: Sink) -> float:
        base = sink.messages()
        errors: list[str] = []
        started = time.monotonic()
        threads = [threading.Thread(target=submit, args=(port, sender, self.messages // len(self.senders), errors))
                   for sender in self.senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        if errors:
            raise RuntimeError(f"submission on port {port}: {errors[0]} ({len(errors)} sessions failed)")
        finished = sink.wait_messages(base + self.messages, TIMEOUT)
        return self.messages / (finished - started)

    def ours(self, lab: Lab, round_number: int) -> Sample:
        service = self.service
        cpu = cpu_seconds(service.pid)
        with recording(service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            rate = self._round(service.ports["submission"], self.our_sink)
            wait_until(lambda: service.spool_count() == 0, 60, "our spool to empty")
        return Sample(rate, self.messages, cpu_seconds(service.pid) - cpu)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        rate = self._round(self.postfix.submission_port, self.peer_sink)
        wait_until(self.postfix.queue_empty, 60, "Postfix's queue to empty")
        return Sample(rate, self.messages)


BENCHMARKS = [Submission()]
