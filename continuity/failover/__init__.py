"""Per-domain failover: the mode state machine, upstream health probes, recovery."""
