"""tricklab: make deep networks train, show why, and measure how much each trick helps."""

__version__ = "0.1.0"
