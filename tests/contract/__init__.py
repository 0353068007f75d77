"""Contract suites: one per contract, run against every implementation."""
