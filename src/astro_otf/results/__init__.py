"""Results: writers that turn an app's source table into the files a job returns, starting
with the IVOA VOTable catalogue that clients (pyvo, TOPCAT, astropy) read."""
