"""PostgreSQL as every adapter drives it: the only importer of psycopg.

* :mod:`.session`  — one libpq connection, every psycopg error translated in one place;
* :mod:`.setting`  — ``synchronous_standby_names`` under an advisory lock, and when it is in force;
* :mod:`.barrier`  — the barrier commit and who acknowledged it;
* :mod:`.fence`    — fencing a standby, what it holds on disk, following, promoting;
* :mod:`.database` — :class:`~.database.Database`, the :class:`pgcohort.seams.Node` methods every HA
  manager shares, built from the four; each adapter (``pgcohort.adapters.*``) adds what differs.

What each promises, measured on PostgreSQL 15: docs/POSTGRES.md.
"""
