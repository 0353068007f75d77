"""Unit tests: one process, in-memory brokers, no servers (except the Redis ones)."""
