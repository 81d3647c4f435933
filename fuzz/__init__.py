"""Fuzz targets and atheris drivers for the site's input parsers (see fuzz/README.md)."""
