"""Consortium side: ServerApp, aggregation, checkpoints and the `m3fm-admin` command."""
