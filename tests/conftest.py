"""Shared fixtures for the whole suite live in ``tests/support``; this file only wires pytest."""
