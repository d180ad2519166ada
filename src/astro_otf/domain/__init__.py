"""Pure domain code: phases, parameters, errors. Imports nothing of the project and does no I/O."""
