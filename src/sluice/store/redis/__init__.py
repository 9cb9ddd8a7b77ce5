"""The Redis backend: limits shared by every host, one Lua script per step, pub/sub wake-ups.

``config`` (the URL, the step scripts, what redis-py's errors mean), ``plans``
(every operation once, with no I/O), ``wire`` (the scripts' arguments and replies),
``store`` (the thin sync driver that runs the plans on a bounded connection pool),
``listener`` (this process's wake-up subscription), ``history`` (run history under
the same key prefix), ``scripts/*.lua`` (the atomic steps).
Needs ``pip install 'sluice[redis]'``.
"""
