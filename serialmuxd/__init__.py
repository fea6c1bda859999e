"""serialmuxd: a serial-console multiplexer daemon."""

__version__ = "0.1.0"
