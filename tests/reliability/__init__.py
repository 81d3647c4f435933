"""Reliability and security tests: fault injection, hostile input, load (issue #8)."""
