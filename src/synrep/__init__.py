"""synrep: learning visual representations from synthetic images."""

__version__ = "0.1.0"
