"""Code every darkroom service shares: message contracts, ports and adapters, runtime."""
