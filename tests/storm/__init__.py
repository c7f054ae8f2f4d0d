"""A fault storm that compares Patroni setups with one checker (issue 23).

* :mod:`tests.storm.schedule` -- pure: a seed becomes a timed list of fault events, the same for every setup.
* :mod:`tests.storm.checker` -- pure: a history of writes and a final read become a report (lost, unexpected,
  recovered, write availability, seconds without a writable primary, split-brain windows).
* :mod:`tests.storm.clients` -- the writers that make the history against a real cluster.
* :mod:`tests.storm.nemesis` -- the partitions (network namespaces) and each fault event, done and undone.
* :mod:`tests.storm.run` -- one schedule on one setup: a fresh cluster, the writers, the events, the heal, the read.

``bench/storm.py`` prints the comparison table; ``tests/storm/test_storm.py`` runs a small fixed set.
"""
