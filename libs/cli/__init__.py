"""The `darkroom` operator CLI."""
