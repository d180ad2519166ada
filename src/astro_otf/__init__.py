"""astro-otf: IVOA UWS 1.1 job service for source finding in radio images."""

__version__ = "0.1.0"
