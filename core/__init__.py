"""Shared types: settings, records, logging. Imports nothing of the other packages."""

from importlib.metadata import version as _version

VERSION = _version("persistence-service")
