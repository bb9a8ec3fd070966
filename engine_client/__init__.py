"""The engine side of Sluice.  It uses only ``stream.wire`` of the daemon."""

__version__ = "0.1.0"
