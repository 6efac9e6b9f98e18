"""The package version, in one place: file metadata and settings.json record it."""
__version__ = "0.1.0"
