"""Servers the benchmark compares the project's service with (what a user would pick instead)."""
