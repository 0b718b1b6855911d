"""ncbench: neural-collapse and few-shot transfer benchmark harness."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ncbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
