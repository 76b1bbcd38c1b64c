"""Who exists: hosted domains, users, aliases, passwords and their policy."""
