"""The metering service: per-account usage tables, folded from the request events with faust."""
