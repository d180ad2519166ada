"""Storage: the database (the truth about jobs) and the job folders (their bytes)."""
