"""Applications the integration tests run in real ``conveyor worker`` processes."""
