"""``pgcohort sidecar``: one per database node, whatever drives it (a :class:`pgcohort.seams.Node`).

It keeps the node's leased ``nodes/<name>`` record current, watches the ruleset, and beside
the primary carries out the steps :func:`pgcohort.core.steps.next_step` decides: confirm the
term, apply, barrier, finalize, admit, bench. Every decision starts from a linearizable read
of the committed ruleset and term. The apply renders the setting from a read made *inside*
the node's setting lock, so it never writes a setting from a ruleset it has not read as
committed, and never an older one than another writer already wrote. A barrier is finalized
only once it proved itself: K members of the new electorate report its LSN as flushed. When
etcd is unreachable it changes nothing: the last applied setting stays, ``/health`` fails,
and it resumes by itself when etcd returns.

One job per module:

* :mod:`.loop`      — the control loop, raft's Ready/Advance: observe, read, ask the core for the
  next step, carry it out, report;
* :mod:`.actions`   — carrying out a step: verify an apply, the barrier and its proof, finalize,
  confirm the term, propose a change;
* :mod:`.proposals` — which change the primary proposes by itself (admission, healing);
* :mod:`.status`    — what it tells others: the node record, ``/health``, eligibility, the gate's
  decisions as metrics;
* :mod:`.timing`    — how long each step of a change took (metrics and one log line);
* :mod:`.state`     — its settings and what it knows now;
* :mod:`.leave`     — scale-down (``pgcohort leave``) and its signals.
"""
