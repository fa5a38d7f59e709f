"""Locust load tests for the served models."""
