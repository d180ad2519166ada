"""The schema's revisions, in order (``0001`` ...); each module says what its revision adds."""
