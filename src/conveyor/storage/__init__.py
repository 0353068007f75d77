"""Storage plumbing shared by the broker and result-backend implementations."""
