"""The IMAP server in memory: capabilities, TLS and login rules, and one test per hardening rule."""

from __future__ import annotations

import base64

import pytest
from twisted.logger import globalLogPublisher

from continuity.imap.server import MAX_USER_IP_CONNECTIONS, POSTAUTH_TIMEOUT
from continuity.mailstore import MailstoreError

from .conftest import PASSWORD, USER, Client


def plain(authzid: str, user: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


# -- greeting, capabilities, TLS, login ------------------------------------------------------------


def test_greeting_lists_capabilities_with_logindisabled_before_tls(client):
    """The greeting is OK with CAPABILITY: STARTTLS and LOGINDISABLED, no AUTH=PLAIN, before TLS."""
    greeting = client.take()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting


def test_login_refused_before_tls_when_tls_is_required(client):
    """LOGIN in clear is refused with PRIVACYREQUIRED when require_tls_for_auth (loopback included)."""
    client.take()
    assert client.command(f"a LOGIN {USER} {PASSWORD}") == [
        b"a NO [PRIVACYREQUIRED] Plaintext login is disabled before STARTTLS"]


def test_authenticate_refused_before_tls_when_tls_is_required(client):
    """AUTHENTICATE PLAIN in clear is refused too."""
    client.take()
    reply = client.command(f"a AUTHENTICATE PLAIN {plain('', USER, PASSWORD)}")
    assert reply[0].startswith(b"a NO [PRIVACYREQUIRED]")


def test_capabilities_after_starttls_offer_auth_plain(client):
    """After STARTTLS, CAPABILITY offers AUTH=PLAIN and neither STARTTLS nor LOGINDISABLED."""
    client.take()
    client.command("a STARTTLS")
    caps = client.command("b CAPABILITY")[0]
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps


def test_login_allowed_in_clear_without_require_tls(make_factory):
    """Without require_tls_for_auth, LOGIN works before TLS."""
    client = Client(make_factory(require_tls_for_auth=False))
    client.take()
    assert client.command(f"a LOGIN {USER} {PASSWORD}")[-1].startswith(b"a OK [CAPABILITY ")


def test_commands_pipelined_after_starttls_are_not_answered(client):
    """Commands sent in the same packet as STARTTLS are discarded, not answered (CVE-2011-0411)."""
    client.take()
    reply = client.send(b"a STARTTLS\r\nb LOGIN bob@example.com Secret123\r\nc NOOP\r\n")
    assert reply == [b"a OK Begin TLS negotiation now"]
    assert client.transport.tls_started is not None
    assert client.command("d NOOP") == [b"d OK NOOP completed"]
    assert client.server.state == "unauth"


def test_login_and_capabilities_after_login(logged_in):
    """After login the capabilities list the extensions and APPENDLIMIT."""
    caps = logged_in.command("a CAPABILITY")[0]
    for cap in (b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"CHILDREN", b"UNSELECT", b"CONDSTORE", b"IDLE",
                b"NAMESPACE", b"LITERAL+", b"ENABLE", b"ID", b"APPENDLIMIT="):
        assert cap in caps


def test_wrong_password_is_authenticationfailed(client):
    """A wrong password gets NO [AUTHENTICATIONFAILED]."""
    client.take()
    client.command("a STARTTLS")
    assert client.command(f"b LOGIN {USER} wrong") == [b"b NO [AUTHENTICATIONFAILED] Authentication failed"]


def test_throttled_login_is_unavailable(client, factory):
    """A throttled login gets the temporary NO [UNAVAILABLE]."""
    factory.authenticator.throttled = True
    client.take()
    client.command("a STARTTLS")
    assert client.command(f"b LOGIN {USER} {PASSWORD}")[0].startswith(b"b NO [UNAVAILABLE]")


def test_authenticate_plain_with_initial_response(client):
    """AUTHENTICATE PLAIN with a SASL-IR initial response logs in."""
    client.take()
    client.command("a STARTTLS")
    assert client.command(f"b AUTHENTICATE PLAIN {plain('', USER, PASSWORD)}")[0].startswith(b"b OK")
    assert client.server.state == "auth"


def test_authenticate_plain_with_continuation(client):
    """AUTHENTICATE PLAIN without initial response asks with '+ ' and takes the next line."""
    client.take()
    client.command("a STARTTLS")
    assert client.command("b AUTHENTICATE PLAIN") == [b"+ "]
    assert client.command(plain(USER, USER, PASSWORD))[0].startswith(b"b OK")


def test_authenticate_cancelled_with_star(client):
    """A '*' response cancels AUTHENTICATE with BAD."""
    client.take()
    client.command("a STARTTLS")
    client.command("b AUTHENTICATE PLAIN")
    assert client.command("*")[0].startswith(b"b BAD")


def test_authenticate_as_another_user_is_refused(client):
    """An authorization identity other than the user is refused."""
    client.take()
    client.command("a STARTTLS")
    reply = client.command(f"b AUTHENTICATE PLAIN {plain('alice@example.com', USER, PASSWORD)}")
    assert reply[0].startswith(b"b NO [AUTHORIZATIONFAILED]")


def test_mailbox_commands_refused_before_login(client):
    """SELECT before login is BAD (not allowed in this state)."""
    client.take()
    assert client.command("a SELECT INBOX")[0].startswith(b"a BAD")


# -- hardening rules ------------------------------------------------------------------------------


def test_append_literal_above_max_message_size_refused_before_continuation(make_factory):
    """An APPEND literal above max_message_size is refused with NO [TOOBIG] and no '+' is sent."""
    client = Client(make_factory(max_message_size=1000))
    client.login()
    reply = client.command("a APPEND INBOX {1001}")
    assert reply == [b"a NO [TOOBIG] Message too big (APPENDLIMIT=1000)"]
    assert client.command("b NOOP") == [b"b OK NOOP completed"]


def test_append_nonsynchronising_literal_above_limit_is_skipped_and_refused(make_factory):
    """A LITERAL+ APPEND above the limit is read and dropped, then refused; the session goes on."""
    client = Client(make_factory(max_message_size=10))
    client.login()
    reply = client.send(b"a APPEND INBOX {20+}\r\n" + b"x" * 20 + b"\r\nb NOOP\r\n")
    assert reply == [b"a NO [TOOBIG] Message too big (APPENDLIMIT=10)", b"b OK NOOP completed"]


def test_append_within_limit_gets_continuation_and_appenduid(logged_in, store, address):
    """APPEND within the limit gets '+', stores the message and answers APPENDUID."""
    message = b"Subject: hi\r\n\r\nbody\r\n"
    assert logged_in.command(b"a APPEND INBOX (\\Seen) {%d}" % len(message)) == [b"+ Ready for literal data"]
    reply = logged_in.send(message + b"\r\n")
    assert reply[0].startswith(b"a OK [APPENDUID ") and reply[0].endswith(b" 1] APPEND completed")
    [ref] = store.get_messages(address)
    assert ref.flags == "S" and store.read_message(ref) == message


def test_deeply_nested_parentheses_answer_bad(logged_in):
    """Deeply nested parentheses are a BAD, not a crash or a recursion error."""
    reply = logged_in.command(b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000)
    assert reply == [b"a BAD Syntax error: too deeply nested parentheses"]
    assert logged_in.command("b NOOP") == [b"b OK NOOP completed"]


def test_long_not_chain_in_search_answers_bad(logged_in):
    """A chain of thousands of NOTs in SEARCH is a BAD, not a recursion error."""
    logged_in.command("s SELECT INBOX")
    reply = logged_in.command(b"a SEARCH " + b"NOT " * 3000 + b"ALL")
    assert reply[-1].startswith(b"a BAD")


def test_backend_error_answers_no_and_keeps_the_connection(logged_in, store, monkeypatch):
    """A mail store failure is a NO [UNAVAILABLE]; the connection stays usable."""

    def broken(*args, **kwargs):
        raise MailstoreError("listing bob INBOX: Input/output error")

    monkeypatch.setattr(store, "list_folders", broken)
    reply = logged_in.command('a LIST "" "*"')
    assert reply[0].startswith(b"a NO [UNAVAILABLE]")
    assert not logged_in.closed
    assert logged_in.command("b NOOP") == [b"b OK NOOP completed"]


@pytest.mark.parametrize("name", [
    b'".."', b'"a/../b"', b'"/etc"', b'"~root"', b'"a.b"', b'"a%b"', b'"&Jjo"', b'"&AGEAYgBj-"',
    b'"a\x00b"', b"{5}\r\na\r\nbc",
])
def test_unsafe_mailbox_names_answer_no(logged_in, name):
    """Unsafe or invalid mailbox names ('..', '/', '~', wildcards, bad modified UTF-7, NUL, CR/LF) get NO."""
    if name.startswith(b"{"):
        logged_in.command(b"a CREATE {5}")
        reply = logged_in.send(b"a\r\nbc\r\n")
    else:
        reply = logged_in.command(b"a CREATE " + name)
    assert reply[-1].startswith(b"a NO"), reply


def test_unknown_mailbox_answers_no_nonexistent(logged_in):
    """SELECT of a mailbox that does not exist gets NO [NONEXISTENT]."""
    assert logged_in.command("a SELECT Nowhere")[0].startswith(b"a NO [NONEXISTENT]")


def test_idle_timeout_before_login_is_limits_idle_timeout(make_factory, clock):
    """Before login the connection closes after [limits] idle_timeout seconds of silence."""
    client = Client(make_factory(idle_timeout=300))
    client.take()
    clock.advance(299)
    assert not client.closed
    clock.advance(2)
    assert client.take() == b"* BYE Autologout; idle for too long\r\n" and client.closed


def test_idle_timeout_after_login_is_thirty_minutes(make_factory, clock):
    """After login the idle timeout is 30 minutes (RFC 3501 5.4)."""
    client = Client(make_factory(idle_timeout=300))
    client.login()
    clock.advance(POSTAUTH_TIMEOUT - 1)
    assert not client.closed
    clock.advance(2)
    assert client.closed


def test_connections_per_ip_beyond_limit_get_bye(make_factory):
    """Beyond connections_per_ip from one IP, a connection gets * BYE and is closed."""
    factory = make_factory(connections_per_ip=2)
    first, second, third = Client(factory), Client(factory), Client(factory)
    assert not first.closed and not second.closed
    assert third.take().startswith(b"* BYE [UNAVAILABLE] Too many connections") and third.closed
    first.server.connectionLost(None)
    assert not Client(factory).closed


def test_connections_per_user_and_ip_beyond_limit_refused(make_factory):
    """Beyond the per user+IP limit a LOGIN gets NO [LIMIT]; a logout frees a place."""
    factory = make_factory(connections_per_ip=50)
    clients = [Client(factory) for _ in range(MAX_USER_IP_CONNECTIONS)]
    for client in clients:
        client.login()
    extra = Client(factory)
    extra.take()
    extra.command("a STARTTLS")
    assert extra.command(f"b LOGIN {USER} {PASSWORD}")[0].startswith(b"b NO [LIMIT]")
    clients[0].server.connectionLost(None)
    assert extra.command(f"c LOGIN {USER} {PASSWORD}")[-1].startswith(b"c OK")


def test_unexpected_exception_is_logged_and_answered_no(logged_in, store, monkeypatch):
    """An unexpected exception is logged with the session id and answered NO [SERVERBUG], no traceback."""
    events = []
    globalLogPublisher.addObserver(events.append)

    def boom(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(store, "list_folders", boom)
    try:
        reply = logged_in.command('a LIST "" "*"')
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reply == [b"a NO [SERVERBUG] Internal error, session " + logged_in.server.session_id.encode()]
    assert any(event.get("session_id") == logged_in.server.session_id and "log_failure" in event
               for event in events)
    assert logged_in.command("b NOOP") == [b"b OK NOOP completed"]


def test_too_many_bad_commands_close_the_connection(make_factory):
    """After max_errors BAD commands the server says BYE and closes."""
    client = Client(make_factory(max_errors=3))
    client.take()
    for tag in (b"a", b"b"):
        client.command(tag + b" FROB")
    assert client.command(b"c FROB")[-1] == b"* BYE Too many invalid commands" and client.closed


def test_line_too_long_gets_bye(client):
    """A command line beyond the line limit gets BYE and a close."""
    client.take()
    reply = client.send(b"a NOOP " + b"x" * 70_000 + b"\r\n")
    assert reply == [b"* BYE Line too long"] and client.closed


def test_literal_of_an_argument_above_limit_is_bad(logged_in):
    """A literal that is not an APPEND message is limited (64 KiB): BAD without '+'."""
    assert logged_in.command("a SELECT {100000}") == [b"a BAD Literal too big"]


def test_pipelined_commands_are_answered_in_order(logged_in):
    """Several commands in one packet are answered one after the other, in order."""
    reply = logged_in.send(b"a NOOP\r\nb SELECT INBOX\r\nc NOOP\r\n")
    tags = [line.split(b" ")[0] for line in reply if not line.startswith(b"*")]
    assert tags == [b"a", b"b", b"c"]


# -- IDLE and concurrent changes ---------------------------------------------------------------------


def test_idle_announces_a_delivery_within_a_second(logged_in, store, address, clock):
    """A message delivered during IDLE (by any Maildir writer) is announced with EXISTS within a second."""
    logged_in.command("a SELECT INBOX")
    assert logged_in.command("b IDLE") == [b"+ idling"]
    store.deliver(address, b"Subject: new\r\n\r\nhi\r\n")
    clock.advance(0.6)
    assert logged_in.take().split(b"\r\n")[:2] == [b"* 1 EXISTS", b"* 1 RECENT"]
    assert logged_in.command("DONE") == [b"b OK IDLE terminated"]


def test_other_sessions_expunge_is_announced_on_noop_not_during_fetch(factory, store, address):
    """Session B sees A's expunge as EXPUNGE on NOOP; a FETCH in between stays consistent (no EXPUNGE)."""
    for n in range(3):
        store.deliver(address, b"Subject: %d\r\n\r\nbody\r\n" % n)
    a, b = Client(factory), Client(factory, ip="192.0.2.8")
    a.login()
    b.login()
    a.command("s SELECT INBOX")
    b.command("s SELECT INBOX")
    a.command("x STORE 2 +FLAGS (\\Deleted)")
    assert a.command("y EXPUNGE")[0] == b"* 2 EXPUNGE"
    fetched = b.command("f FETCH 1:3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert not any(line.endswith(b"EXPUNGE") for line in fetched)
    assert fetched[-1] == b"f NO [EXPUNGEISSUED] Some messages were expunged meanwhile"
    assert b"* 2 EXPUNGE" in b.command("n NOOP")
    assert b.command("g FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 3)"
