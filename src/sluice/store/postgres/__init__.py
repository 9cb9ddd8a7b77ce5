"""The PostgreSQL backend: limits shared by every host, one PL/pgSQL function per step.

``plans`` (each operation as a plan that does no I/O), ``store`` (the sync and
async drivers and their connection pools), ``listener`` (LISTEN/NOTIFY
wake-ups), ``history`` (run history in the same schema), ``sql/*.sql``. Needs
``pip install 'sluice[postgres]'``.
"""
