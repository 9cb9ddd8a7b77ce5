"""The embedded default backend: limits and run history in one SQLite file (and ``memory://``).

``store`` (the limits store), ``engine`` (its decision logic, shared with the
in-process ``memory`` store), ``ipc`` (how processes on one host find each
other: lock files, wake-up sockets, exit watches), ``history`` (run history in
the same file), ``schema.sql``.
"""
