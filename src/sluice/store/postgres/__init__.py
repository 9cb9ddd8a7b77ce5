"""The PostgreSQL backend: limits shared by every host, one PL/pgSQL function per step.

``plans`` (each operation as a plan that does no I/O), ``store`` (the sync
driver and its bounded connection pool), ``listener`` (LISTEN/NOTIFY wake-ups),
``history`` (run history in the same schema), ``sql/*.sql``. Needs
``pip install 'sluice[postgres]'``.
"""
