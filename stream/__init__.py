"""Sluice host daemon: the image API, tickets and (later) OVF stores."""

__version__ = "0.1.0"
