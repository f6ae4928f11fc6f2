"""curate: video dataset curation for video diffusion models."""

__version__ = "0.1.0"
