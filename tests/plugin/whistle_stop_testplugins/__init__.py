"""Test backends, found by the farm through entry points (see pyproject.toml)."""
