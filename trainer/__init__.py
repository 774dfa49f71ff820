"""codash's training engine: pure PyTorch, no Redis, no Streamlit."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("codash")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
