"""HTTP: the IVOA UWS 1.1 resources at /jobs, as XML (the standard) and JSON."""
