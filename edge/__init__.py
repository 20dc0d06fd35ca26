"""Edge face recognition appliance: on-device detect → align → embed → match."""

__version__ = "0.1.0"
