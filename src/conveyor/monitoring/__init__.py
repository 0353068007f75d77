"""What operators read: task events, counters and Prometheus metrics, from the broker."""
