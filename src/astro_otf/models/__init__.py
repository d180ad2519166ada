"""Models and apps: what a job can run, each with its declared parameter schema."""
