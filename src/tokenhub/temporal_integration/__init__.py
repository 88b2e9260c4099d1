"""How requests are run: directly against the engine, or durably as Temporal workflows.

Modules: ``dispatcher`` (the per-request choice), ``direct`` (the in-process path), ``manager`` (client
and worker lifecycle), ``breaker``, ``workflows``, ``activities``, ``types``, ``records``, ``flag``.
Nothing is imported here: the workflow sandbox imports this package, and must not drag in I/O libraries.
"""
