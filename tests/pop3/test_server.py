"""The POP3 server protocol in memory: commands, states, STLS, logins, the maildrop lock and hardening."""

from __future__ import annotations

import base64

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from continuity.envelope import parse_address
from continuity.mailstore import MailstoreError
from continuity.errors import StockPathReached
from continuity.pop3.server import MIN_IDLE_TIMEOUT

from .conftest import ADDRESS, PASSWORD, Client

import pytest

M1 = b"Subject: one\r\n\r\n.starts with a dot\r\nbody\r\n"
M2 = b"Subject: two\n\nbare LF lines\n.x\n"


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def multiline(lines: list[bytes]) -> list[bytes]:
    """The body of a multi-line reply (between +OK and the final dot)."""
    assert lines[0].startswith(b"+OK") and lines[-1] == b".", lines
    return lines[1:-1]


# -- greeting, CAPA, STLS -----------------------------------------------------------------


def test_greeting_is_ok_without_apop_timestamp(client):
    """The greeting is +OK with our hostname and no APOP challenge (APOP is not offered)."""
    assert client.lines() == [b"+OK pop.example.test POP3 ready."]


def test_capa_before_tls_offers_stls_but_no_plaintext_login(client):
    """With require_tls_for_auth, CAPA before TLS lists STLS and neither USER nor SASL."""
    client.take()
    caps = multiline(client.command("CAPA"))
    for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                b"IMPLEMENTATION continuity", b"STLS"):
        assert cap in caps
    assert b"USER" not in caps and not any(cap.startswith(b"SASL") for cap in caps)
    # No EXPIRE NEVER (RFC 2449 6.7): recovery does remove INBOX mail once the upstream has it.
    assert not any(cap.startswith(b"EXPIRE") for cap in caps)


def test_capa_after_stls_offers_user_and_sasl_plain_not_stls(client):
    """After STLS, CAPA lists USER and SASL PLAIN and no longer STLS."""
    client.take()
    client.command("STLS")
    caps = multiline(client.command("CAPA"))
    assert b"USER" in caps and b"SASL PLAIN" in caps and b"STLS" not in caps


def test_capa_without_require_tls_offers_login_in_clear(make_factory):
    """Without require_tls_for_auth, USER and SASL PLAIN are offered before TLS."""
    client = Client(make_factory(require_tls_for_auth=False))
    client.take()
    assert b"USER" in multiline(client.command("CAPA"))


def test_stls_starts_tls_with_the_listener_context(client, factory):
    """STLS answers +OK and starts TLS with the configured context."""
    client.take()
    assert client.command("STLS") == [b"+OK Begin TLS negotiation now."]
    assert client.transport.tls_started is factory.tls_context and client.server.tls


def test_commands_pipelined_with_stls_are_not_answered(client):
    """Commands sent in the same packet as STLS are dropped, not answered after the handshake (CVE-2011-0411)."""
    client.take()
    lines = client.send(b"STLS\r\nUSER " + ADDRESS.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert lines == [b"+OK Begin TLS negotiation now."]
    assert client.server.state == "AUTHORIZATION"
    assert client.command("PASS " + PASSWORD) == [b"-ERR No username given: send USER first."]


def test_stls_refused_when_tls_is_active(client):
    """A second STLS is refused."""
    client.take()
    client.command("STLS")
    assert client.command("STLS") == [b"-ERR TLS is already active."]


def test_stls_refused_on_implicit_tls(make_factory):
    """On pop3s (implicit TLS) STLS is refused and USER is allowed at once."""
    client = Client(make_factory(implicit_tls=True))
    client.take()
    assert client.command("STLS") == [b"-ERR TLS is already active."]
    assert client.command("USER " + ADDRESS) == [b"+OK Send your password."]


def test_stls_refused_after_login(logged_in):
    """STLS is an AUTHORIZATION-state command (RFC 2595 4)."""
    assert logged_in.command("STLS")[0].startswith(b"-ERR")


# -- logins -------------------------------------------------------------------------------


def test_user_refused_before_tls_when_tls_is_required(client):
    """USER before TLS is refused with [AUTH] when require_tls_for_auth is set."""
    client.take()
    assert client.command("USER " + ADDRESS) == [
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."]


def test_pass_and_auth_refused_before_tls_when_tls_is_required(client, authenticator):
    """PASS and AUTH before TLS are refused and never reach the authenticator."""
    client.take()
    assert client.command("PASS " + PASSWORD)[0].startswith(b"-ERR [AUTH] Plaintext")
    assert client.command("AUTH PLAIN " + plain("", ADDRESS, PASSWORD))[0].startswith(b"-ERR [AUTH] Plaintext")
    assert authenticator.attempts == []


def test_user_pass_logs_in(client, authenticator):
    """USER and PASS log in through the authenticator with the peer IP and service pop3."""
    client.login()
    assert client.server.state == "TRANSACTION"
    assert authenticator.attempts == [(ADDRESS, "192.0.2.7", "pop3")]


def test_password_may_contain_spaces(client, authenticator):
    """PASS takes the rest of the line as the password (RFC 1939 7)."""
    client.take()
    client.command("STLS")
    client.command("USER " + ADDRESS)
    assert client.command("PASS  with spaces ") == [b"-ERR [AUTH] Authentication failed."]


def test_wrong_password_is_an_auth_error(client):
    """A failed login is -ERR [AUTH] and the session stays in AUTHORIZATION."""
    client.take()
    client.command("STLS")
    client.command("USER " + ADDRESS)
    assert client.command("PASS wrong") == [b"-ERR [AUTH] Authentication failed."]
    assert client.server.state == "AUTHORIZATION" and not client.closed


def test_throttled_login_is_a_temporary_error(client, authenticator):
    """A throttled login is -ERR [SYS/TEMP] (RFC 3206), not [AUTH]."""
    authenticator.throttled = True
    client.take()
    client.command("STLS")
    client.command("USER " + ADDRESS)
    assert client.command("PASS " + PASSWORD)[0].startswith(b"-ERR [SYS/TEMP]")


def test_pass_without_user_is_refused(client):
    """PASS needs a USER first."""
    client.take()
    client.command("STLS")
    assert client.command("PASS x") == [b"-ERR No username given: send USER first."]


def test_auth_plain_with_initial_response_logs_in(client):
    """AUTH PLAIN with an initial response (RFC 5034 4) logs in at once."""
    client.take()
    client.command("STLS")
    assert client.command("AUTH PLAIN " + plain("", ADDRESS, PASSWORD)) == [b"+OK Logged in."]


def test_auth_plain_with_continuation_logs_in(client):
    """AUTH PLAIN without initial response gets an empty challenge, then the response."""
    client.take()
    client.command("STLS")
    assert client.command("AUTH PLAIN") == [b"+ "]
    assert client.command(plain(ADDRESS, ADDRESS, PASSWORD)) == [b"+OK Logged in."]


def test_auth_plain_cancelled_with_star(client):
    """A '*' response cancels the exchange with -ERR (RFC 5034 4)."""
    client.take()
    client.command("STLS")
    client.command("AUTH PLAIN")
    assert client.command("*") == [b"-ERR Authentication aborted by client."]
    assert client.command("NOOP")[0].startswith(b"-ERR Not logged in")


def test_auth_plain_bad_base64_is_refused(client):
    """A response that is not base64 is refused."""
    client.take()
    client.command("STLS")
    assert client.command("AUTH PLAIN !!!") == [b"-ERR Invalid base64 data in continued response."]


def test_auth_plain_for_another_user_is_refused(client, authenticator):
    """An authorisation identity other than the user's own fails the login without checking it."""
    client.take()
    client.command("STLS")
    assert client.command("AUTH PLAIN " + plain("alice@example.com", ADDRESS, PASSWORD)) == [
        b"-ERR [AUTH] Authentication failed."]
    assert authenticator.attempts == []


def test_auth_unknown_mechanism_is_refused(client):
    """Only PLAIN is offered."""
    client.take()
    client.command("STLS")
    assert client.command("AUTH CRAM-MD5") == [b"-ERR Unsupported authentication mechanism."]


def test_auth_without_mechanism_lists_plain(client):
    """A bare AUTH lists the mechanisms (the RFC 1734 habit of older clients)."""
    client.take()
    client.command("STLS")
    assert multiline(client.command("AUTH")) == [b"PLAIN"]


def test_apop_is_not_offered(client):
    """APOP is an unknown command."""
    client.take()
    assert client.command("APOP bob 0123456789abcdef0123456789abcdef") == [b"-ERR Unknown command."]


def test_transaction_commands_refused_before_login(client):
    """STAT, LIST, RETR... before login are refused."""
    client.take()
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP"):
        assert client.command(command)[0].startswith(b"-ERR Not logged in"), command


def test_authorization_commands_refused_after_login(logged_in):
    """USER, PASS and AUTH after login are refused."""
    for command in ("USER x", "PASS y", "AUTH PLAIN"):
        assert logged_in.command(command)[0].startswith(b"-ERR Already logged in"), command


# -- the maildrop lock ----------------------------------------------------------------------


def test_second_session_on_the_maildrop_gets_in_use(factory, logged_in):
    """A second session of the same user gets -ERR [IN-USE] (RFC 2449 8.1.1) and stays unauthenticated."""
    other = Client(factory)
    other.take()
    other.command("STLS")
    other.command("USER " + ADDRESS)
    assert other.command("PASS " + PASSWORD) == [b"-ERR [IN-USE] Mailbox is locked by another POP3 session."]
    assert other.server.state == "AUTHORIZATION"


def test_lock_is_released_on_disconnect(factory, logged_in):
    """The lock goes with the connection, even without QUIT."""
    logged_in.disconnect()
    Client(factory).login()


def test_lock_is_released_at_quit_before_the_reply(factory, logged_in):
    """After QUIT's +OK a new session can lock the maildrop at once."""
    assert logged_in.command("QUIT")[0].startswith(b"+OK")
    Client(factory).login()


# -- transaction state ----------------------------------------------------------------------


def test_stat_list_and_uidl(client, deliver):
    """STAT, LIST and UIDL count the messages with their exact sizes (CRLF line ends)."""
    refs = deliver(M1, M2)
    client.login()
    assert client.command("STAT") == [b"+OK 2 %d" % (len(M1) + len(M2) + 4)]
    assert multiline(client.command("LIST")) == [b"1 %d" % len(M1), b"2 %d" % (len(M2) + 4)]
    assert client.command("LIST 2") == [b"+OK 2 %d" % (len(M2) + 4)]
    uidls = multiline(client.command("UIDL"))
    uidvalidity = client.server.maildrop.store.snapshot(parse_address(ADDRESS)).uidvalidity
    assert uidls == [b"%d %08X%08X" % (n, ref.uid, uidvalidity) for n, ref in enumerate(refs, 1)]
    assert client.command("UIDL 1") == [b"+OK " + uidls[0]]


def test_uidl_is_stable_across_sessions(factory, deliver):
    """The same message has the same unique-id in the next session, also after others are deleted."""
    deliver(M1, M2)
    first = Client(factory)
    first.login()
    before = multiline(first.command("UIDL"))
    first.command("DELE 1")
    first.command("QUIT")
    second = Client(factory)
    second.login()
    assert multiline(second.command("UIDL")) == [b"1 " + before[1].split()[1]]


def test_retr_sends_crlf_and_dot_stuffed_lines(client, deliver):
    """RETR normalises line ends to CRLF and doubles leading dots; the size matches what is sent."""
    deliver(M1, M2)
    client.login()
    reply = client.command("RETR 1")
    assert reply == [b"+OK %d octets" % len(M1), b"Subject: one", b"", b"..starts with a dot", b"body", b"."]
    reply = client.command("RETR 2")
    assert reply == [b"+OK %d octets" % (len(M2) + 4), b"Subject: two", b"", b"bare LF lines", b"..x", b"."]


def test_top_sends_header_and_n_body_lines(client, deliver):
    """TOP msg n sends the header, the blank line and n body lines."""
    deliver(b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n")
    client.login()
    assert client.command("TOP 1 0") == [b"+OK Top of message follows.", b"A: 1", b"B: 2", b"", b"."]
    assert client.command("TOP 1 2") == [b"+OK Top of message follows.", b"A: 1", b"B: 2", b"", b"l1", b"l2", b"."]
    assert client.command("TOP 1 99")[-4:] == [b"l1", b"l2", b"l3", b"."]


def test_top_with_bad_line_count_is_refused(client, deliver):
    """TOP needs a non-negative line count."""
    deliver(M1)
    logged_in = client
    logged_in.login()
    for argument in ("1 -1", "1 x", "1", "1 2 3"):
        assert logged_in.command("TOP " + argument)[0].startswith(b"-ERR"), argument


def test_dele_takes_effect_only_at_quit(factory, store, deliver):
    """DELE marks; the message stays on disk until QUIT (RFC 1939 6)."""
    deliver(M1, M2)
    client = Client(factory)
    client.login()
    assert client.command("DELE 1") == [b"+OK Marked to be deleted."]
    assert client.command("STAT") == [b"+OK 1 %d" % (len(M2) + 4)]
    assert len(store.get_messages(parse_address(ADDRESS))) == 2
    assert client.command("QUIT") == [b"+OK Logging out, 1 messages deleted."]
    assert client.closed
    assert len(store.get_messages(parse_address(ADDRESS))) == 1


def test_disconnect_without_quit_deletes_nothing(factory, store, deliver):
    """A session that ends without QUIT removes nothing and marks nothing seen."""
    deliver(M1)
    session(factory, "RETR 1", "DELE 1").disconnect()
    (message,) = store.get_messages(parse_address(ADDRESS))
    assert not message.has_flag("S")


def test_rset_unmarks_deleted_messages(client, deliver, store):
    """RSET unmarks every message marked deleted."""
    deliver(M1)
    logged_in = client
    logged_in.login()
    logged_in.command("DELE 1")
    assert logged_in.command("RSET")[0].startswith(b"+OK 1 messages")
    logged_in.command("QUIT")
    assert len(store.get_messages(parse_address(ADDRESS))) == 1


def session(factory, *commands: str) -> Client:
    """A logged-in session that sends ``commands`` in turn."""
    client = Client(factory)
    client.login()
    for command in commands:
        client.command(command)
    return client


def test_retr_marks_the_message_seen_at_quit(factory, store, deliver):
    """A message retrieved with RETR gets the Maildir S flag at QUIT, so IMAP shows it read."""
    deliver(M1, M2)
    session(factory, "RETR 2", "TOP 1 0", "QUIT")
    first, second = store.get_messages(parse_address(ADDRESS))
    assert second.has_flag("S") and not first.has_flag("S")


def test_rset_forgets_retrieved_messages(factory, store, deliver):
    """After RSET a retrieved message is not marked seen (as Dovecot does)."""
    deliver(M1)
    session(factory, "RETR 1", "RSET", "QUIT")
    assert not store.get_messages(parse_address(ADDRESS))[0].has_flag("S")


def test_messages_delivered_during_the_session_wait_for_the_next(factory, deliver):
    """The maildrop is fixed at login (RFC 1939 4); new mail shows in the next session."""
    deliver(M1)
    client = Client(factory)
    client.login()
    deliver(M2)
    assert client.command("STAT")[0].startswith(b"+OK 1 ")
    client.command("QUIT")
    again = Client(factory)
    again.login()
    assert again.command("STAT")[0].startswith(b"+OK 2 ")


def test_noop_and_quit_in_authorization(client):
    """QUIT before login just closes with +OK."""
    client.take()
    assert client.command("QUIT") == [b"+OK Logging out."]
    assert client.closed


def test_pipelined_commands_are_answered_in_order(client, deliver):
    """Commands pipelined in one packet (RFC 2449 6.6) are answered one after the other."""
    deliver(M1)
    client.take()
    client.command("STLS")
    lines = client.send(f"USER {ADDRESS}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nQUIT\r\n".encode())
    assert lines == [b"+OK Send your password.", b"+OK Logged in.", b"+OK 1 %d" % len(M1),
                     b"+OK 1 %d" % len(M1), b"+OK Logging out."]


def test_commands_are_case_insensitive_and_accept_bare_lf(logged_in, deliver):
    """Keywords are case-insensitive; a bare LF ends a line too."""
    assert logged_in.send(b"stat\n") == [b"+OK 0 0"]


# -- hardening: one test per rule --------------------------------------------------------------


@pytest.mark.parametrize("argument", ["0", "-2", "99999999999999999999", "abc", "1.5", "+1", "", " "])
def test_dele_with_bad_message_number_is_refused(client, deliver, argument):
    """DELE 0, DELE -2, huge numbers and non-numeric arguments get -ERR and the session goes on."""
    deliver(M1)
    logged_in = client
    logged_in.login()
    assert logged_in.command(("DELE " + argument).rstrip() if argument else "DELE")[0].startswith(b"-ERR")
    assert logged_in.command("STAT")[0].startswith(b"+OK 1 ")


def test_message_number_beyond_the_maildrop_is_refused(logged_in):
    """A number past the last message is -ERR no such message."""
    assert logged_in.command("RETR 3") == [b"-ERR There's no message 3."]
    assert logged_in.command("LIST 4294967295") == [b"-ERR There's no message 4294967295."]


def test_deleted_message_cannot_be_used(client, deliver):
    """A message marked deleted can be neither listed, retrieved nor deleted again."""
    deliver(M1)
    logged_in = client
    logged_in.login()
    logged_in.command("DELE 1")
    for command in ("DELE 1", "RETR 1", "TOP 1 0", "LIST 1", "UIDL 1"):
        assert logged_in.command(command) == [b"-ERR Message 1 is marked deleted."], command
    assert multiline(logged_in.command("LIST")) == []


def test_overlong_command_line_is_refused(client):
    """A command line over 255 octets (RFC 2449 4) gets -ERR and the next command is read normally."""
    client.take()
    assert client.command("NOOP " + "x" * 300) == [b"-ERR Command line too long (RFC 2449: 255 octets)."]
    assert client.command("CAPA")[0].startswith(b"+OK")


def test_overlong_line_split_over_packets_is_refused_once(client):
    """An overlong line that arrives in pieces is answered once, at its end."""
    client.take()
    assert client.send(b"X" * 200) == []
    assert client.send(b"X" * 200) == []
    assert client.send(b"\r\nCAPA\r\n")[0] == b"-ERR Command line too long (RFC 2449: 255 octets)."


def test_unterminated_line_closes_the_connection(client):
    """A line without end beyond 64 KiB closes the connection."""
    client.take()
    client.send(b"X" * 70_000)
    assert client.closed


def test_nul_and_bad_utf8_in_a_command_are_refused(client):
    """NUL and invalid UTF-8 in a command line are -ERR."""
    client.take()
    assert client.command(b"USER a\x00b") == [b"-ERR Invalid command syntax."]
    assert client.command(b"USER \xff") == [b"-ERR Invalid UTF-8 in command."]


def test_reply_never_echoes_control_characters(logged_in):
    """Client text in a reply is escaped: no CR, LF or NUL from the client on the wire."""
    reply = logged_in.send(b"DELE 1\rRSET\r\n")
    assert reply == [b"-ERR Invalid command syntax."]


def test_too_many_errors_close_the_connection(make_factory):
    """After max_errors bad commands the server says so and closes."""
    client = Client(make_factory(limits={"max_errors": 3}))
    client.take()
    assert client.command("BOGUS") == [b"-ERR Unknown command."]
    assert client.command("BOGUS") == [b"-ERR Unknown command."]
    assert client.command("BOGUS") == [b"-ERR Too many bad commands."]
    assert client.closed


def test_connections_per_ip_are_limited(make_factory):
    """Beyond connections_per_ip from one IP a connection gets -ERR [SYS/TEMP] and is closed."""
    factory = make_factory(limits={"connections_per_ip": 2})
    first, second = Client(factory), Client(factory)
    third = Client(factory)
    assert third.lines() == [b"-ERR [SYS/TEMP] Too many connections from 192.0.2.7."] and third.closed
    assert Client(factory, ip="192.0.2.8").lines()[0].startswith(b"+OK")
    first.disconnect()
    assert Client(factory).lines()[0].startswith(b"+OK")
    assert not second.closed


def test_idle_timeout_is_at_least_ten_minutes(client, clock):
    """The autologout timer is at least 10 minutes (RFC 1939 3) even with idle_timeout = 300."""
    client.take()
    clock.advance(MIN_IDLE_TIMEOUT - 1)
    assert not client.closed
    clock.advance(1)
    assert client.lines() == [b"-ERR Disconnected for inactivity."] and client.closed


def test_idle_timeout_from_config_when_longer(make_factory, clock):
    """A configured idle_timeout above 10 minutes is used as it is."""
    client = Client(make_factory(limits={"idle_timeout": 1200}))
    clock.advance(1199)
    assert not client.closed
    clock.advance(1)
    assert client.closed


def test_idle_timeout_without_quit_keeps_the_messages(factory, store, deliver, clock):
    """An idle session is closed without the UPDATE state: its deletions are forgotten."""
    deliver(M1)
    client = Client(factory)
    client.login()
    client.command("DELE 1")
    clock.advance(MIN_IDLE_TIMEOUT)
    client.disconnect()
    assert len(store.get_messages(parse_address(ADDRESS))) == 1


def test_backend_error_at_login_keeps_the_connection(client, store, monkeypatch):
    """A mail store failure while opening the maildrop is -ERR [SYS/TEMP]; the session goes on."""
    def broken(*args):
        raise MailstoreError("disk on fire")

    monkeypatch.setattr(store, "snapshot", broken)
    client.take()
    client.command("STLS")
    client.command("USER " + ADDRESS)
    assert client.command("PASS " + PASSWORD) == [b"-ERR [SYS/TEMP] Mailbox is temporarily unavailable."]
    assert not client.closed and client.command("CAPA")[0].startswith(b"+OK")
    monkeypatch.undo()
    client.command("USER " + ADDRESS)
    assert client.command("PASS " + PASSWORD) == [b"+OK Logged in."]  # the failed attempt left no lock


def test_backend_error_on_retr_after_login(factory, deliver, store, monkeypatch):
    """RETR of a listed message whose file cannot be read is -ERR [SYS/TEMP]; STAT still works."""
    deliver(M1)
    client = Client(factory)
    client.login()

    def broken(ref):
        raise MailstoreError("disk on fire")

    monkeypatch.setattr(store, "open_message", broken)
    assert client.command("RETR 1") == [b"-ERR [SYS/TEMP] Mailbox is temporarily unavailable; try again later."]
    assert client.command("STAT")[0].startswith(b"+OK 1 ")


def test_message_removed_by_another_tool_is_refused(factory, deliver, store):
    """RETR of a message another Maildir tool removed meanwhile is -ERR, not a crash."""
    (ref,) = deliver(M1)
    client = Client(factory)
    client.login()
    store.remove_message(ref)
    assert client.command("RETR 1") == [b"-ERR [SYS/PERM] Message 1 was removed by another mail client."]
    assert client.command("NOOP") == [b"+OK"]


def test_update_failure_is_reported_at_quit(factory, deliver, store, monkeypatch):
    """When QUIT cannot remove the messages it says -ERR (RFC 1939 6) and still closes."""
    deliver(M1)
    client = Client(factory)
    client.login()
    client.command("DELE 1")

    def broken(*args):
        raise MailstoreError("disk on fire")

    monkeypatch.setattr(store, "expunge", broken)
    assert client.command("QUIT") == [b"-ERR [SYS/TEMP] Some deleted messages were not removed."]
    assert client.closed


def test_unexpected_exception_is_logged_and_answered_without_traceback(logged_in, monkeypatch):
    """A bug in a handler is logged with the session id and answered -ERR [SYS/TEMP]; the session goes on."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        monkeypatch.setattr(logged_in.server.maildrop, "stat", lambda: 1 / 0)
        reply = logged_in.command("STAT")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reply == [b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information."]
    assert any(event.get("session_id") == logged_in.server.session_id and "log_failure" in event for event in events)
    assert b"ZeroDivision" not in b"".join(reply)
    assert logged_in.command("NOOP") == [b"+OK"]


def test_unexpected_failure_of_an_async_command_is_answered(logged_in, monkeypatch):
    """A Deferred command failing unexpectedly is answered -ERR and the next command is read."""
    monkeypatch.setattr(logged_in.server, "do_NOOP", lambda argument: defer.fail(RuntimeError("bug")))
    assert logged_in.command("NOOP")[0].startswith(b"-ERR [SYS/TEMP] Internal error")
    assert logged_in.command("STAT")[0].startswith(b"+OK")


def test_stock_twisted_paths_are_guarded(client):
    """The stock line dispatch of twisted.mail.pop3 is never reachable."""
    with pytest.raises(StockPathReached):
        client.server.lineReceived(b"STAT")
    with pytest.raises(StockPathReached):
        client.server.processCommand(b"STAT")


def test_tcp_nodelay_is_set(factory):
    """The server sets TCP_NODELAY on its connection."""
    from .conftest import TLSCapableTransport

    class NoDelayTransport(TLSCapableTransport):
        nodelay = None

        def setTcpNoDelay(self, enabled):
            self.nodelay = enabled

    transport = NoDelayTransport()
    Client(factory, transport=transport)
    assert transport.nodelay is True


def test_read_failure_after_ok_closes_the_connection(factory, deliver, store, monkeypatch):
    """When reading fails after RETR's +OK, no -ERR is mixed into the message: the connection closes."""
    deliver(M1)
    client = Client(factory)
    client.login()

    class Failing:
        def __init__(self):
            self.reads = 0

        def read(self, size):
            self.reads += 1
            if self.reads > 1:
                raise OSError(5, "I/O error")
            return b"Subject: one\r\n".ljust(size, b"x")  # a whole chunk: the file goes on

        def close(self):
            pass

    monkeypatch.setattr(store, "open_message", lambda ref: Failing())
    lines = client.command("RETR 1")
    assert lines[0].startswith(b"+OK") and b"-ERR" not in b"".join(lines) and client.closed
