"""continuityctl end to end, as a subprocess on a temporary config and store."""

from __future__ import annotations

import json
import os
import re

from support import CLI

PASSWORD = "Secret123\n"


def add_domain(cli: CLI, *extra: str) -> None:
    result = cli("domain", "add", "example.com", "--upstream", "127.0.0.1:2525", *extra)
    assert result.returncode == 0, result.stderr


def test_help_lists_the_commands(cli):
    """--help documents the command groups."""
    result = cli("--help")
    assert result.returncode == 0
    for word in ("domain", "user", "status"):
        assert word in result.stdout


def test_domain_add_and_show_json(cli):
    """domain add then domain show --json has the contract's keys and defaults."""
    add_domain(cli)
    shown = cli.json("domain", "show", "EXAMPLE.com")
    assert shown["domain"] == "example.com"
    assert shown["upstream"] == "127.0.0.1:2525"
    assert (shown["scope"], shown["activation"], shown["continuity"]) == ("all", "auto", True)
    assert (shown["mode"], shown["health"], shown["queue_depth"]) == ("normal", "unknown", 0)


def test_domain_add_options(cli):
    """--scope, --activation and --no-continuity are stored."""
    add_domain(cli, "--scope", "selected", "--activation", "manual", "--no-continuity")
    shown = cli.json("domain", "show", "example.com")
    assert (shown["scope"], shown["activation"], shown["continuity"]) == ("selected", "manual", False)


def test_domain_set_changes_settings(cli):
    """domain set changes upstream, scope, activation, continuity and password policy."""
    add_domain(cli)
    result = cli("domain", "set", "example.com", "--upstream", "mail.example.com:2526", "--scope", "selected",
                 "--activation", "manual", "--continuity", "off", "--password-policy", "min=10,digit")
    assert result.returncode == 0, result.stderr
    shown = cli.json("domain", "show", "example.com")
    assert shown["upstream"] == "mail.example.com:2526"
    assert (shown["scope"], shown["activation"], shown["continuity"]) == ("selected", "manual", False)
    assert shown["password_policy"] == "min=10,digit"


def test_domain_list_json_is_an_array(cli):
    """domain list --json prints a JSON array of domain objects."""
    add_domain(cli)
    cli("domain", "add", "other.example", "--upstream", "10.1.1.1:25")
    listed = cli.json("domain", "list")
    assert [d["domain"] for d in listed] == ["example.com", "other.example"]
    assert all({"domain", "upstream", "scope", "activation", "continuity", "mode", "health", "queue_depth"} <= d.keys()
               for d in listed)


def test_domain_list_human_readable(cli):
    """Without --json, a table with a header."""
    add_domain(cli)
    result = cli("domain", "list")
    assert result.returncode == 0
    assert "DOMAIN" in result.stdout and "example.com" in result.stdout


def test_duplicate_domain_is_refused_with_exit_1(cli):
    """A refusal is exit 1 with one line on stderr."""
    add_domain(cli)
    result = cli("domain", "add", "example.com", "--upstream", "127.0.0.1:25")
    assert result.returncode == 1
    assert result.stderr.strip() == "domain example.com is already hosted"


def test_usage_error_exits_2(cli):
    """Missing arguments and unknown choices are usage errors."""
    assert cli("domain", "add", "example.com").returncode == 2
    assert cli("domain", "add", "example.com", "--upstream", "h:25", "--scope", "some").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_bad_upstream_is_refused(cli):
    """An upstream without a port is refused with a reason."""
    result = cli("domain", "add", "example.com", "--upstream", "mail.example.com")
    assert result.returncode == 1
    assert "bad upstream" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_malformed_password_policy_is_refused(cli):
    """A malformed --password-policy SPEC is exit 1 with the reason."""
    add_domain(cli)
    result = cli("domain", "set", "example.com", "--password-policy", "min=8,shouty")
    assert result.returncode == 1
    assert "bad password policy" in result.stderr


def test_domain_remove(cli):
    """domain remove stops hosting it."""
    add_domain(cli)
    assert cli("domain", "remove", "example.com").returncode == 0
    assert cli.json("domain", "list") == []
    assert cli("domain", "show", "example.com").returncode == 1


def test_domain_remove_refused_with_stored_mail_unless_forced(cli, tmp_path):
    """A domain whose mailboxes hold mail is only removed with --force."""
    add_domain(cli)
    maildir = tmp_path / "var" / "mail" / "example.com" / "bob"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1700000000.M1P1.host,S=5").write_bytes(b"hello")
    result = cli("domain", "remove", "example.com")
    assert result.returncode == 1 and "--force" in result.stderr
    assert cli("domain", "remove", "example.com", "--force").returncode == 0


def test_user_add_with_password(cli):
    """user add --password-stdin registers an active, covered user."""
    add_domain(cli)
    result = cli("user", "add", "Bob@Example.com", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 0, result.stderr
    shown = cli.json("user", "show", "bob@example.com")
    assert shown == {**shown, "address": "bob@example.com", "active": True, "covered": True, "aliases": []}
    assert shown["has_password"] is True


def test_weak_password_is_refused_with_its_reason(cli):
    """The policy's reason is the one line on stderr, exit 1, and no user is created."""
    add_domain(cli)
    result = cli("user", "add", "bob@example.com", "--password-stdin", stdin="secret123\n")
    assert result.returncode == 1
    assert result.stderr.strip() == "password too weak: needs an upper-case letter"
    assert cli.json("user", "list") == []


def test_password_never_from_argv(cli):
    """user passwd without --password-stdin is refused; there is no argv password option."""
    add_domain(cli)
    cli("user", "add", "bob@example.com")
    assert cli("user", "passwd", "bob@example.com").returncode == 1
    assert cli("user", "passwd", "bob@example.com", "--password", "Secret123").returncode == 2
    result = cli("user", "passwd", "bob@example.com", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert cli.json("user", "show", "bob@example.com")["has_password"] is True


def test_user_of_unhosted_domain_is_refused(cli):
    """Users only for hosted domains."""
    result = cli("user", "add", "bob@nowhere.example", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 1 and "not hosted" in result.stderr


def test_inactive_user_and_activation(cli):
    """--inactive, activate and deactivate change active and covered."""
    add_domain(cli)
    cli("user", "add", "bob@example.com", "--inactive", "--password-stdin", stdin=PASSWORD)
    shown = cli.json("user", "show", "bob@example.com")
    assert (shown["active"], shown["covered"]) == (False, False)
    assert cli("user", "activate", "bob@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["covered"] is True
    assert cli("user", "deactivate", "bob@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["active"] is False


def test_include_exclude_with_both_scopes(cli):
    """exclude takes a user out under scope all; include selects under scope selected."""
    add_domain(cli)
    cli("user", "add", "bob@example.com", "--password-stdin", stdin=PASSWORD)
    assert cli("user", "exclude", "bob@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["covered"] is False
    assert cli("user", "include", "bob@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["covered"] is True
    cli("domain", "set", "example.com", "--scope", "selected")
    assert cli.json("user", "show", "bob@example.com")["covered"] is False
    cli("user", "include", "bob@example.com")
    assert cli.json("user", "show", "bob@example.com")["covered"] is True
    cli("user", "exclude", "bob@example.com")
    assert cli.json("user", "show", "bob@example.com")["covered"] is False


def test_aliases(cli):
    """user alias add/remove changes the user's aliases list."""
    add_domain(cli)
    cli("user", "add", "bob@example.com", "--password-stdin", stdin=PASSWORD)
    assert cli("user", "alias", "add", "bob@example.com", "Robert@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["aliases"] == ["robert@example.com"]
    result = cli("user", "alias", "add", "bob@example.com", "x@nowhere.example")
    assert result.returncode == 1 and "not hosted" in result.stderr
    assert cli("user", "alias", "remove", "bob@example.com", "robert@example.com").returncode == 0
    assert cli.json("user", "show", "bob@example.com")["aliases"] == []
    assert cli("user", "alias", "remove", "bob@example.com", "robert@example.com").returncode == 1


def test_user_list_by_domain(cli):
    """user list [DOMAIN] --json is an array of user objects."""
    add_domain(cli)
    cli("domain", "add", "other.example", "--upstream", "10.0.0.2:25")
    for address in ("bob@example.com", "amy@example.com", "zed@other.example"):
        cli("user", "add", address, "--password-stdin", stdin=PASSWORD)
    assert [u["address"] for u in cli.json("user", "list")] == [
        "amy@example.com", "bob@example.com", "zed@other.example"]
    listed = cli.json("user", "list", "example.com")
    assert [u["address"] for u in listed] == ["amy@example.com", "bob@example.com"]
    assert all({"address", "active", "covered", "aliases"} <= u.keys() for u in listed)
    assert "bob@example.com" in cli("user", "list").stdout


def test_user_remove(cli):
    """user remove deletes the user and its aliases."""
    add_domain(cli)
    cli("user", "add", "bob@example.com", "--password-stdin", stdin=PASSWORD)
    cli("user", "alias", "add", "bob@example.com", "b@example.com")
    assert cli("user", "remove", "bob@example.com").returncode == 0
    assert cli("user", "show", "bob@example.com").returncode == 1
    assert cli("user", "add", "b@example.com").returncode == 0


def test_status_json(cli):
    """status --json is an object with domains, queue counts and listeners."""
    add_domain(cli)
    status = cli.json("status")
    assert status["domains"][0]["domain"] == "example.com"
    assert status["queue"] == {"queued": 0, "deferred": 0, "held": 0}
    assert "listeners" in status
    assert "example.com" in cli("status").stdout


def test_config_from_environment(cli):
    """CONTINUITY_CONFIG is used when --config is omitted."""
    import subprocess

    from support import BIN

    add_domain(cli)
    result = subprocess.run([str(BIN / "continuityctl"), "domain", "list", "--json"], capture_output=True,
                            text=True, env={**os.environ, "CONTINUITY_CONFIG": str(cli.config)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["domain"] == "example.com"


def test_bad_config_is_one_line(tmp_path):
    """A bad config file is one line naming the key, exit 1."""
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_recipients = -1\n")
    result = CLI(path)("status")
    assert result.returncode == 1
    assert result.stderr.strip() == "config error: limits.max_recipients: must be a positive integer, got -1"


def test_last_switch_is_null_before_any_switch(cli):
    """A domain that never changed mode shows last_switch null, and 'never' in status."""
    add_domain(cli)
    assert cli.json("domain", "show", "example.com")["last_switch"] is None
    assert cli.json("status")["domains"][0]["last_switch"] is None
    assert "never" in cli("status").stdout


def test_status_and_domain_show_report_the_last_switch(cli):
    """status and domain show give the last switch's time, modes, reason and manual/automatic."""
    from continuity.config import load_config
    from continuity.db import Database
    from continuity.directory.store import Directory

    add_domain(cli)
    assert cli("emergency", "start", "example.com").returncode == 0
    manual = cli.json("domain", "show", "example.com")["last_switch"]
    assert {k: manual[k] for k in ("from", "to", "reason", "automatic")} == {
        "from": "normal", "to": "emergency", "reason": "continuityctl emergency start", "automatic": False}
    assert manual["time"].endswith("+00:00")
    db = Database(load_config(str(cli.config)).db_path).open()
    Directory(db, clock=lambda: 1_800_000_000.0).set_mode("example.com", "recovering", "probe succeeded: 250 ok",
                                                          automatic=True)
    db.close()
    expected = {"time": "2027-01-15T08:00:00+00:00", "from": "emergency", "to": "recovering",
                "reason": "probe succeeded: 250 ok", "automatic": True}
    assert cli.json("domain", "show", "example.com")["last_switch"] == expected
    assert cli.json("status")["domains"][0]["last_switch"] == expected
    line = "2027-01-15T08:00:00+00:00  emergency -> recovering  (automatic: probe succeeded: 250 ok)"
    assert re.search(rf"^last switch: +{re.escape(line)}$", cli("domain", "show", "example.com").stdout, re.M)
    assert line in cli("status").stdout
