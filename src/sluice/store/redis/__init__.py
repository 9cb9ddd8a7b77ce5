"""The Redis backend: limits shared by every host, one Lua script per step, pub/sub wake-ups.

``store`` (the sync and async limits stores), ``listener`` (this process's
wake-up subscription), ``history`` (run history under the same key prefix),
``scripts/*.lua`` (the atomic steps). Needs ``pip install 'sluice[redis]'``.
"""
