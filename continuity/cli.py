"""``continuityctl``: administer domains, users and the queue (CONTRACT section 3).

It works on the store directly (never on the running process), so it works
whether or not the service runs; the service notices changes within 2 seconds.
Exit status: 0 done, 1 refused (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from continuity.config import Config, config_path_from, load_config
from continuity.db import Database, SchemaTooNew
from continuity.directory.store import Directory, Domain, ModeChange, User, is_covered
from continuity.errors import ConfigError, ContinuityError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class Refused(Exception):
    """The command was understood but cannot be done: exit status 1."""


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


class Context:
    """What a command runs against: the config and the opened store."""

    def __init__(self, config: Config, out: TextIO, stdin: TextIO):
        self.config = config
        self.out = out
        self.stdin = stdin
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.db_path).open()
        return self._db

    @property
    def directory(self) -> Directory:
        return Directory(self.db)

    def queue_depth(self, domain: str) -> int:
        from continuity.spool.index import QueueIndex

        return QueueIndex(self.db).depth(domain)

    def stored_messages(self, domain: str) -> int:
        from continuity.mailstore import count_messages

        return count_messages(self.config.mail_root, domain)

    def emit(self, args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
        if getattr(args, "json", False):
            json.dump(data, self.out, indent=2, sort_keys=True)
            self.out.write("\n")
        else:
            rendered = text()
            if rendered:
                self.out.write(rendered.rstrip("\n") + "\n")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def read_password(ctx: Context, args: argparse.Namespace, required: bool) -> str | None:
    """The password from standard input (``--password-stdin``), never from argv."""
    if not getattr(args, "password_stdin", False):
        if required:
            raise Refused("a password is needed: pass --password-stdin and write it to standard input")
        return None
    if ctx.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise Refused("passwords do not match")
        return first
    line = ctx.stdin.readline()
    if not line:
        raise Refused("no password on standard input")
    return line.rstrip("\r\n")


# -- rendering ---------------------------------------------------------------


def switch_json(change: ModeChange | None) -> dict[str, Any] | None:
    """A mode change as ``--json`` shows it (``last_switch``, ``mode_history`` items)."""
    if change is None:
        return None
    return {"time": iso(change.time), "from": change.old_mode, "to": change.new_mode, "reason": change.reason,
            "automatic": change.automatic}


def describe_switch(switch: dict[str, Any] | None) -> str | None:
    """One line for people: ``TIME from -> to (automatic: reason)``."""
    if switch is None:
        return None
    how = "automatic" if switch["automatic"] else "manual"
    return f"{switch['time']}  {switch['from']} -> {switch['to']}  ({how}: {switch['reason']})"


def domain_json(ctx: Context, domain: Domain) -> dict[str, Any]:
    last = ctx.directory.mode_history(domain.name, limit=1)
    return {
        "domain": domain.name,
        "upstream": str(domain.upstream),
        "scope": domain.scope,
        "activation": domain.activation,
        "continuity": domain.continuity,
        "mode": domain.mode,
        "mode_since": iso(domain.mode_since),
        "health": domain.health,
        "health_checked": iso(domain.health_checked),
        "health_detail": domain.health_detail,
        "queue_depth": ctx.queue_depth(domain.name),
        "password_policy": domain.password_policy.spec(),
        "last_switch": switch_json(last[0] if last else None),
    }


def user_json(user: User, domain: Domain) -> dict[str, Any]:
    return {
        "address": user.address,
        "active": user.active,
        "covered": is_covered(user, domain),
        "aliases": list(user.aliases),
        "inclusion": user.inclusion or "default",
        "has_password": user.has_password,
        "source": user.source,
    }


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)


# -- domain ------------------------------------------------------------------


def cmd_domain_add(ctx: Context, args: argparse.Namespace) -> None:
    domain = ctx.directory.add_domain(
        args.domain, args.upstream, scope=args.scope, activation=args.activation, continuity=not args.no_continuity
    )
    ctx.emit(args, domain_json(ctx, domain), lambda: f"domain {domain.name} added, upstream {domain.upstream}")


def cmd_domain_set(ctx: Context, args: argparse.Namespace) -> None:
    continuity = None if args.continuity is None else args.continuity == "on"
    domain = ctx.directory.set_domain(
        args.domain,
        upstream=args.upstream,
        scope=args.scope,
        activation=args.activation,
        continuity=continuity,
        password_policy=args.password_policy,
    )
    ctx.emit(args, domain_json(ctx, domain), lambda: f"domain {domain.name} updated")


def cmd_domain_list(ctx: Context, args: argparse.Namespace) -> None:
    items = [domain_json(ctx, d) for d in ctx.directory.list_domains()]
    ctx.emit(
        args,
        items,
        lambda: table(
            [(d["domain"], d["upstream"], d["mode"], d["health"], d["scope"], d["activation"],
              "on" if d["continuity"] else "off", d["queue_depth"]) for d in items],
            ("DOMAIN", "UPSTREAM", "MODE", "HEALTH", "SCOPE", "ACTIVATION", "CONTINUITY", "QUEUE"),
        ) if items else "no domains (add one with: continuityctl domain add DOMAIN --upstream HOST:PORT)",
    )


def cmd_domain_show(ctx: Context, args: argparse.Namespace) -> None:
    domain = ctx.directory.get_domain(args.domain)
    data = domain_json(ctx, domain)
    data["users"] = len(ctx.directory.list_users(domain.name))
    data["mode_history"] = [switch_json(c) for c in ctx.directory.mode_history(domain.name)]

    def text() -> str:
        lines = key_values([
            ("domain", data["domain"]), ("upstream", data["upstream"]), ("mode", data["mode"]),
            ("mode since", data["mode_since"]), ("last switch", describe_switch(data["last_switch"])),
            ("health", data["health"]),
            ("last probe", data["health_checked"]), ("health detail", data["health_detail"]),
            ("scope", data["scope"]), ("activation", data["activation"]),
            ("continuity", "on" if data["continuity"] else "off"), ("password policy", data["password_policy"]),
            ("users", data["users"]), ("queue depth", data["queue_depth"]),
        ])
        history = [f"  {describe_switch(h)}" for h in data["mode_history"]]
        return lines + ("\nmode changes:\n" + "\n".join(history) if history else "")

    ctx.emit(args, data, text)


def cmd_domain_remove(ctx: Context, args: argparse.Namespace) -> None:
    name = ctx.directory.get_domain(args.domain).name
    if not args.force:
        queued, stored = ctx.queue_depth(name), ctx.stored_messages(name)
        if queued or stored:
            raise Refused(
                f"domain {name} still has {queued} queued and {stored} stored messages (use --force to remove anyway)"
            )
    ctx.directory.remove_domain(name)
    ctx.emit(args, {"domain": name, "removed": True}, lambda: f"domain {name} removed")


# -- user --------------------------------------------------------------------


def _show_user(ctx: Context, args: argparse.Namespace, user: User, message: str) -> None:
    domain = ctx.directory.get_domain(user.domain)
    ctx.emit(args, user_json(user, domain), lambda: message)


def cmd_user_add(ctx: Context, args: argparse.Namespace) -> None:
    password = read_password(ctx, args, required=False)
    user = ctx.directory.add_user(args.address, password, active=not args.inactive)
    note = "" if password is not None else " (no password yet: set one with user passwd)"
    _show_user(ctx, args, user, f"user {user.address} added{' (inactive)' if args.inactive else ''}{note}")


def cmd_user_passwd(ctx: Context, args: argparse.Namespace) -> None:
    password = read_password(ctx, args, required=True)
    user = ctx.directory.set_password(args.address, password)
    _show_user(ctx, args, user, f"password of {user.address} changed")


def _user_change(method: str, verb: str) -> Callable[[Context, argparse.Namespace], None]:
    def command(ctx: Context, args: argparse.Namespace) -> None:
        user = getattr(ctx.directory, method)(args.address)
        _show_user(ctx, args, user, f"user {user.address} {verb}")

    return command


def cmd_user_activate(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.set_active(args.address, True)
    _show_user(ctx, args, user, f"user {user.address} activated")


def cmd_user_deactivate(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.set_active(args.address, False)
    _show_user(ctx, args, user, f"user {user.address} deactivated")


def cmd_alias_add(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.add_alias(args.address, args.alias)
    _show_user(ctx, args, user, f"alias {args.alias.lower()} now delivers to {user.address}")


def cmd_alias_remove(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.remove_alias(args.address, args.alias)
    _show_user(ctx, args, user, f"alias {args.alias.lower()} removed from {user.address}")


def cmd_user_list(ctx: Context, args: argparse.Namespace) -> None:
    domains = {d.name: d for d in ctx.directory.list_domains()}
    users = ctx.directory.list_users(args.domain)
    items = [user_json(u, domains[u.domain]) for u in users]
    ctx.emit(
        args,
        items,
        lambda: table(
            [(u["address"], "yes" if u["active"] else "no", "yes" if u["covered"] else "no",
              ", ".join(u["aliases"]) or "-") for u in items],
            ("ADDRESS", "ACTIVE", "COVERED", "ALIASES"),
        ) if items else "no users",
    )


def cmd_user_show(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.get_user(args.address)
    data = user_json(user, ctx.directory.get_domain(user.domain))
    ctx.emit(args, data, lambda: key_values([
        ("address", data["address"]), ("active", "yes" if data["active"] else "no"),
        ("covered", "yes" if data["covered"] else "no"), ("inclusion", data["inclusion"]),
        ("password", "set" if data["has_password"] else "not set"), ("source", data["source"]),
        ("aliases", ", ".join(data["aliases"]) or None),
    ]))


def cmd_user_remove(ctx: Context, args: argparse.Namespace) -> None:
    user = ctx.directory.get_user(args.address)
    ctx.directory.remove_user(user.address)
    ctx.emit(args, {"address": user.address, "removed": True}, lambda: f"user {user.address} removed")


# -- status ------------------------------------------------------------------


def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    from continuity.spool.index import QueueIndex

    domains = [domain_json(ctx, d) for d in ctx.directory.list_domains()]
    counts = QueueIndex(ctx.db).counts()
    listeners = {name: desc for name, desc in ctx.config.listen.items() if desc}
    data = {
        "hostname": ctx.config.server.hostname,
        "data_dir": ctx.config.data_dir,
        "domains": domains,
        "queue": counts,
        "listeners": listeners,
    }

    def text() -> str:
        parts = [f"continuity on {data['hostname']} (data in {data['data_dir']})", ""]
        if domains:
            parts.append(table([(d["domain"], d["mode"], d["health"], d["queue_depth"],
                                 describe_switch(d["last_switch"]) or "never") for d in domains],
                               ("DOMAIN", "MODE", "HEALTH", "QUEUE", "LAST SWITCH")))
        else:
            parts.append("no domains")
        parts += ["", "queue: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
                  "listeners: " + (", ".join(f"{k}={v}" for k, v in listeners.items()) or "none")]
        return "\n".join(parts)

    ctx.emit(args, data, text)


# -- emergency, queue, track ---------------------------------------------------


def cmd_emergency_start(ctx: Context, args: argparse.Namespace) -> None:
    domain = ctx.directory.get_domain(args.domain)
    if domain.mode == "emergency":
        raise Refused(f"domain {domain.name} is already in emergency mode")
    ctx.directory.set_mode(domain.name, "emergency", "continuityctl emergency start", automatic=False)
    ctx.emit(args, domain_json(ctx, ctx.directory.get_domain(domain.name)),
             lambda: f"domain {domain.name} is now in emergency mode; covered users' mail goes to their"
                     " continuity mailboxes")


def cmd_emergency_stop(ctx: Context, args: argparse.Namespace) -> None:
    domain = ctx.directory.get_domain(args.domain)
    if domain.mode != "emergency":
        raise Refused(f"domain {domain.name} is not in emergency mode (mode: {domain.mode})")
    ctx.directory.set_mode(domain.name, "recovering", "continuityctl emergency stop", automatic=False)
    ctx.emit(args, domain_json(ctx, ctx.directory.get_domain(domain.name)),
             lambda: f"domain {domain.name} is recovering: INBOX mail is being redelivered to"
                     f" {domain.upstream}, then it returns to normal")


def cmd_queue_list(ctx: Context, args: argparse.Namespace) -> None:
    from continuity.spool.index import QueueIndex

    entries = QueueIndex(ctx.db).listing(args.domain)
    items = [{
        "queue_id": e.queue_id, "sender": e.sender, "recipient": e.recipient, "domain": e.domain,
        "direction": e.direction, "state": e.state, "attempts": e.attempts,
        "next_attempt": iso(e.next_attempt) if e.state != "held" else None, "last_error": e.last_error,
        "received": iso(e.received),
    } for e in entries]
    ctx.emit(args, items, lambda: table(
        [(i["queue_id"], i["sender"] or "<>", i["recipient"], i["state"], i["attempts"],
          i["next_attempt"] or "after recovery", (i["last_error"] or "")[:60]) for i in items],
        ("QUEUE ID", "SENDER", "RECIPIENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"),
    ) if items else "queue is empty")


def cmd_queue_flush(ctx: Context, args: argparse.Namespace) -> None:
    """Deferred mail is retried now (held mail waits for its domain's recovery)."""
    import time as _time

    from continuity.spool.index import QueueIndex

    domain = ctx.directory.get_domain(args.domain).name if args.domain else None
    count = QueueIndex(ctx.db).release_all(domain, _time.time(), states=("deferred",))
    ctx.emit(args, {"flushed": count}, lambda: f"{count} deferred recipient(s) will be retried now")


def cmd_track(ctx: Context, args: argparse.Namespace) -> None:
    from continuity import tracking
    from continuity.envelope import parse_address

    since = None
    if args.since:
        try:
            parsed = datetime.datetime.fromisoformat(args.since)
        except ValueError:
            raise Refused(f"--since: not an ISO date or time: {args.since!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        since = parsed.timestamp()
    if args.status and args.status not in tracking.STATUSES:
        raise Refused(f"--status must be one of {', '.join(tracking.STATUSES)}")
    sender = None
    if args.sender is not None:
        sender = "" if args.sender in ("", "<>") else str(parse_address(args.sender))
    recipient = str(parse_address(args.recipient)) if args.recipient else None
    rows = tracking.query(ctx.db, sender=sender, recipient=recipient, since=since, status=args.status)
    ctx.emit(args, rows, lambda: table(
        [(r["time"], r["queue_id"] or "-", r["sender"] or "<>", r["recipient"], r["status"],
          (r["events"][-1]["detail"] or "")[:70]) for r in rows],
        ("TIME", "QUEUE ID", "SENDER", "RECIPIENT", "STATUS", "DETAIL"),
    ) if rows else "no messages match")


# -- parser ------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with the contract's exit status 2 and a one-line error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="continuityctl",
        description="Administer the continuity mail service: hosted domains, users, failover and the queue.",
        epilog="The config file comes from --config or $CONTINUITY_CONFIG. Exit status: 0 done, 1 refused, 2 usage.",
    )
    parser.add_argument("--config", "-c", help="path of the TOML config file (default: $CONTINUITY_CONFIG)")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    domain = top.add_parser("domain", help="hosted domains").add_subparsers(
        dest="action", metavar="ACTION", parser_class=Parser, required=True)
    p = domain.add_parser("add", help="host a domain; its mail is relayed to the upstream")
    p.add_argument("domain")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the customer's own mail server")
    p.add_argument("--scope", choices=("all", "selected"), default="all",
                   help="who gets a continuity mailbox: all users (default) or selected ones")
    p.add_argument("--activation", choices=("auto", "manual"), default="auto",
                   help="switch to emergency mode automatically on a 4xx or timeout (default), or only by hand")
    p.add_argument("--no-continuity", action="store_true", help="relay only, never deliver to continuity mailboxes")
    _json_flag(p)
    p.set_defaults(run=cmd_domain_add)
    p = domain.add_parser("set", help="change a domain's settings")
    p.add_argument("domain")
    p.add_argument("--upstream", metavar="HOST:PORT")
    p.add_argument("--scope", choices=("all", "selected"))
    p.add_argument("--activation", choices=("auto", "manual"))
    p.add_argument("--continuity", choices=("on", "off"))
    p.add_argument("--password-policy", metavar="SPEC", help="e.g. min=8,upper,lower,digit[,special]")
    _json_flag(p)
    p.set_defaults(run=cmd_domain_set)
    p = domain.add_parser("list", help="all hosted domains with mode, health and queue depth")
    _json_flag(p)
    p.set_defaults(run=cmd_domain_list)
    p = domain.add_parser("show", help="one domain's settings, mode history and health")
    p.add_argument("domain")
    _json_flag(p)
    p.set_defaults(run=cmd_domain_show)
    p = domain.add_parser("remove", help="stop hosting a domain (refused while mail is queued or stored)")
    p.add_argument("domain")
    p.add_argument("--force", action="store_true", help="remove even with queued or stored mail")
    _json_flag(p)
    p.set_defaults(run=cmd_domain_remove)

    user = top.add_parser("user", help="users of hosted domains").add_subparsers(
        dest="action", metavar="ACTION", parser_class=Parser, required=True)
    p = user.add_parser("add", help="register a user of a hosted domain")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--inactive", action="store_true", help="add the user deactivated")
    _json_flag(p)
    p.set_defaults(run=cmd_user_add)
    p = user.add_parser("passwd", help="set a user's password (the domain's policy applies)")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _json_flag(p)
    p.set_defaults(run=cmd_user_passwd)
    for name, run, help_text in (
        ("activate", cmd_user_activate, "allow the user to log in and get a continuity mailbox"),
        ("deactivate", cmd_user_deactivate, "refuse logins and continuity delivery for the user"),
        ("include", _user_change("include", "included in continuity"), "put the user into continuity"),
        ("exclude", _user_change("exclude", "excluded from continuity"), "take the user out of continuity"),
        ("show", cmd_user_show, "one user's state"),
        ("remove", cmd_user_remove, "remove a user and its aliases"),
    ):
        p = user.add_parser(name, help=help_text)
        p.add_argument("address")
        _json_flag(p)
        p.set_defaults(run=run)
    p = user.add_parser("list", help="users, of one domain or all")
    p.add_argument("domain", nargs="?")
    _json_flag(p)
    p.set_defaults(run=cmd_user_list)
    alias = user.add_parser("alias", help="addresses delivering to a user").add_subparsers(
        dest="alias_action", metavar="ACTION", parser_class=Parser, required=True)
    for name, run, help_text in (("add", cmd_alias_add, "add an alias"), ("remove", cmd_alias_remove, "remove one")):
        p = alias.add_parser(name, help=help_text)
        p.add_argument("address")
        p.add_argument("alias")
        _json_flag(p)
        p.set_defaults(run=run)

    emergency = top.add_parser("emergency", help="switch a domain's emergency mode by hand").add_subparsers(
        dest="action", metavar="ACTION", parser_class=Parser, required=True)
    for name, run, help_text in (
        ("start", cmd_emergency_start, "enter emergency mode now: covered users' queued mail goes to their mailboxes"),
        ("stop", cmd_emergency_stop, "leave emergency mode: redeliver INBOX mail to the upstream, then normal"),
    ):
        p = emergency.add_parser(name, help=help_text)
        p.add_argument("domain")
        _json_flag(p)
        p.set_defaults(run=run)
    queue = top.add_parser("queue", help="mail waiting for delivery").add_subparsers(
        dest="action", metavar="ACTION", parser_class=Parser, required=True)
    p = queue.add_parser("list", help="queued, deferred and held recipients")
    p.add_argument("domain", nargs="?")
    _json_flag(p)
    p.set_defaults(run=cmd_queue_list)
    p = queue.add_parser("flush", help="retry deferred mail now")
    p.add_argument("domain", nargs="?")
    _json_flag(p)
    p.set_defaults(run=cmd_queue_flush)
    p = top.add_parser("track", help="message tracking: one row per message and recipient")
    p.add_argument("--sender", metavar="ADDRESS")
    p.add_argument("--recipient", metavar="ADDRESS")
    p.add_argument("--since", metavar="ISO", help="e.g. 2026-11-23 or 2026-11-23T10:00:00+01:00")
    p.add_argument("--status", metavar="STATUS", help="received, relayed, deferred, delayed, redelivered, ...")
    _json_flag(p)
    p.set_defaults(run=cmd_track)

    p = top.add_parser("status", help="every domain's mode and health, queue counts, listeners")
    _json_flag(p)
    p.set_defaults(run=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        config = load_config(config_path_from(args.config))
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return EXIT_REFUSED
    ctx = Context(config, out, stdin or sys.stdin)
    try:
        args.run(ctx, args)
    except (Refused, ContinuityError, SchemaTooNew) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_REFUSED
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"{exc.strerror or exc}{where}\n")
        return EXIT_REFUSED
    except Exception as exc:  # one line for the operator, never a traceback (DESIGN: errors)
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
        return EXIT_REFUSED
    finally:
        ctx.close()
    return EXIT_OK


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
