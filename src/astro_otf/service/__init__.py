"""The job service: the policy between HTTP (uws/) and storage (store/) and execution."""
