"""The package's version, readable by any module without importing the package's top level."""

__version__ = "0.1.0"
