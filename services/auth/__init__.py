"""The auth service: accounts, API keys, tiers, quotas and sign-up admission."""
