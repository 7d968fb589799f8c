"""Shared pytest configuration. Fixtures live in plugin modules next to this file."""

pytest_plugins = ["fixtures_cluster"]
