"""The ruleset: the committed rule plus, during a change, the previous rule (the joint phase).

Invariants (checked by :func:`check_invariants` after every transition and in every
property test):

1. One change at a time. A ruleset is *stable* (``previous`` is None) or *joint*
   (``previous`` is the rule before the change, and the two differ by exactly one added
   member, one removed member, or the policy). A new change is refused while joint.
2. A member counts only after its propose commits and stops counting only after finalize:
   in the joint phase both rules are active, and every failover must satisfy both
   (see :mod:`pgcohort.core.failover`).
3. Every commit increments ``version`` by one; every commit is a compare-and-swap on the
   revision it was based on (the store enforces this; the core only produces the values).
4. Both active rules are enforceable by the current primary (it is in the cohort, and K is
   no larger than its electorate).
5. Every write of the ``ruleset`` key goes through a CAS that creates it at version 1 or
   increments its version by one, so the record's ``version`` equals etcd's own count of
   writes to the key (its ``kv.version``); likewise the term's number. A record that breaks
   this was put behind the protocol's back (a restore by hand, a stale backup, a rogue
   writer; a version going backwards always does) and nothing acts on it
   (:func:`check_written_by_protocol`).

Transitions are pure functions from a ruleset to the next one; the store commits them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from pgcohort.core.rules import AnyK, CrossZone, Member, Policy, Rule, check_member_name, parse_policy
from pgcohort.errors import InvalidInputError, InvalidRecordError, RefusedError

Phase = Literal["stable", "joint"]


@dataclass(frozen=True)
class AddMember:
    member: Member

    def __str__(self) -> str:
        return f"add {self.member.name}"


@dataclass(frozen=True)
class RemoveMember:
    name: str
    bench: bool = False  # healing: keep it on the bench, to be admitted again once it streams and catches up
    why: str = ""

    def __str__(self) -> str:
        if self.bench:
            return f"bench {self.name}" + (f" ({self.why})" if self.why else "")
        return f"remove {self.name}"


@dataclass(frozen=True)
class SetPolicy:
    policy: Policy

    def __str__(self) -> str:
        return f"policy {self.policy}"


Change = AddMember | RemoveMember | SetPolicy


@dataclass(frozen=True)
class Ruleset:
    """One committed version of the ruleset record (the value of the ``ruleset`` key)."""

    version: int
    rule: Rule
    previous: Rule | None = None
    changed_by: str = ""
    changed_at: str = ""
    reason: str = ""
    writer: str = ""
    benched: tuple[Member, ...] = ()  # taken out of the rule by healing; admitted again once caught up

    @property
    def phase(self) -> Phase:
        return "stable" if self.previous is None else "joint"

    def active_rules(self) -> tuple[Rule, ...]:
        """The rules a failover must satisfy: the rule, plus ``previous`` while joint."""
        return (self.rule,) if self.previous is None else (self.rule, self.previous)

    def show(self) -> str:
        """``any 1 of (a b c) && any 1 of (a b)`` in the joint phase, like raft's JointConfig."""
        return " && ".join(r.show() for r in self.active_rules())

    def counts(self, name: str) -> bool:
        """True if ``name``'s acknowledgements count under every active rule."""
        return all(name in r.names for r in self.active_rules())

    def bench_member(self, name: str) -> Member | None:
        return next((m for m in self.benched if m.name == name), None)


def describe_change(previous: Rule, rule: Rule) -> Change | None:
    """The single change that turns ``previous`` into ``rule``, or None if there is not exactly one."""
    added = rule.names - previous.names
    removed = previous.names - rule.names
    same_policy = previous.policy == rule.policy
    if len(added) == 1 and not removed and same_policy:
        (name,) = added
        m = rule.member(name)
        assert m is not None
        if set(previous.cohort) <= set(rule.cohort):
            return AddMember(m)
    if len(removed) == 1 and not added and same_policy and set(rule.cohort) <= set(previous.cohort):
        (name,) = removed
        return RemoveMember(name)
    if not added and not removed and not same_policy and previous.cohort == rule.cohort:
        return SetPolicy(rule.policy)
    return None


def initial(rule: Rule, primary: str, *, changed_by: str, now: str, writer: str = "") -> Ruleset:
    """Version 1 of a new cluster's ruleset (stable)."""
    rule.check(primary)
    return Ruleset(1, rule, None, changed_by, now, f"init with primary {primary}", writer)


def propose(current: Ruleset, change: Change, primary: str, *, changed_by: str, now: str, writer: str = "") -> Ruleset:
    """The joint ruleset that starts ``change``, or :class:`RefusedError` saying why not."""
    if current.previous is not None:
        pending = describe_change(current.previous, current.rule)
        raise RefusedError(
            f"refused {change}: a change is already in progress ({pending}, version "
            f"{current.version}, joint since {current.changed_at or 'unknown'}); it finishes when "
            "the sidecar beside the primary has applied it and finalized. Nothing was changed; "
            "check `pgcohort status` and retry after it is stable"
        )
    old, benched = current.rule, current.benched
    if isinstance(change, AddMember):
        name = change.member.name
        clash = [m.name for m in old.cohort if m.name.lower() == name.lower()]
        if clash:
            raise RefusedError(f"refused add {name}: {clash[0]!r} is already in the cohort ({old.show()})")
        new = Rule(old.policy, old.cohort + (change.member,))
        benched = tuple(m for m in benched if m.name.lower() != name.lower())
    elif isinstance(change, RemoveMember):
        check_member_name(change.name)
        if old.member(change.name) is None and current.bench_member(change.name) is not None and not change.bench:
            # Off the bench for good: the rule does not change, so there is no joint phase.
            return replace(
                current,
                version=current.version + 1,
                changed_by=changed_by,
                changed_at=now,
                reason=f"forget {change.name} (benched)",
                writer=writer,
                benched=tuple(m for m in benched if m.name != change.name),
            )
        if old.member(change.name) is None:
            raise RefusedError(f"refused remove {change.name}: no such member in the cohort ({old.show()})")
        if change.name == primary:
            raise RefusedError(
                f"refused remove {change.name}: it is the primary (current term); "
                "switch over to another member first, then remove it"
            )
        new = Rule(old.policy, tuple(m for m in old.cohort if m.name != change.name))
        if change.bench:
            member = old.member(change.name)
            assert member is not None
            benched = tuple(sorted(benched + (member,)))
    else:
        if change.policy == old.policy:
            raise RefusedError(f"refused policy {change.policy}: it is already the policy")
        new = Rule(change.policy, old.cohort)
    try:
        new.check(primary)
    except RefusedError as e:
        raise RefusedError(f"refused {change}: {e}. Nothing was changed") from None
    return Ruleset(current.version + 1, new, old, changed_by, now, str(change), writer, benched)


def finalize(current: Ruleset, *, changed_by: str, now: str, writer: str = "") -> Ruleset:
    """The stable ruleset that ends the joint phase (after apply and barrier)."""
    if current.previous is None:
        raise RefusedError(f"nothing to finalize: version {current.version} is already stable")
    change = describe_change(current.previous, current.rule)
    return Ruleset(
        current.version + 1, current.rule, None, changed_by, now, f"finalize {change}", writer, current.benched
    )


def check_invariants(ruleset: Ruleset, primary: str | None = None) -> None:
    """Raise AssertionError if ``ruleset`` breaks an invariant of the module docstring."""
    assert ruleset.version >= 1, f"version {ruleset.version} < 1"
    both = sorted(m.name for m in ruleset.benched if ruleset.rule.member(m.name) is not None)
    assert not both, f"{', '.join(both)} both in the rule and on the bench"
    if ruleset.previous is not None:
        assert describe_change(ruleset.previous, ruleset.rule) is not None, (
            f"joint phase must differ by exactly one change: {ruleset.show()}"
        )
    if primary is not None:
        for r in ruleset.active_rules():
            r.check(primary)


RESTORE_HINT = (
    "Nothing was changed, and nothing acts on it: no setting is written and no one is promoted from it, and the last "
    "good setting stays in force. Inspect it with `pgcohort history` and `etcdctl get`, then run "
    "`pgcohort restore` to commit the last valid version again"
)


def check_written_by_protocol(number: int, key_version: int, what: str, where: str) -> None:
    """Invariant 5: ``number`` (a ruleset's version, a term's number) equals etcd's write count of its key."""
    if number != key_version:
        raise InvalidRecordError(
            f"{where} says {what} {number}, but etcd counts {key_version} write(s) of that key: it was "
            f"written outside pgcohort's compare-and-swap (a put by hand, a stale backup, a rogue writer). "
            + RESTORE_HINT,
            record="term" if what == "term" else "ruleset",
        )


def restoration(
    history: list[Ruleset], primary: str, key_version: int, *, changed_by: str, now: str, writer: str, problem: str
) -> Ruleset:
    """The ruleset ``pgcohort restore`` commits: the newest valid history entry the term's ``primary`` can enforce,
    again, as the next version of the key (its etcd write count + 1, keeping invariant 5)."""
    for old in sorted(history, key=lambda rs: rs.version, reverse=True):
        try:
            check_invariants(old, primary)
        except (AssertionError, RefusedError):
            continue
        reason = f"restore version {old.version} ({problem.split('. ')[0][:200]})"
        return replace(
            old, version=key_version + 1, changed_by=changed_by, changed_at=now, reason=reason, writer=writer
        )
    raise RefusedError(
        f"no valid version in the history is enforceable by the term's primary {primary}; nothing was "
        "changed. Restore the ruleset by hand with etcdctl from a backup"
    )


# --- the record format (JSON in etcd) -------------------------------------------------


def _policy_record(p: Policy) -> dict[str, Any]:
    return {"kind": "cross-zone"} if isinstance(p, CrossZone) else {"kind": "any", "k": p.k}


def _rule_record(r: Rule) -> dict[str, Any]:
    return {
        "policy": _policy_record(r.policy),
        "cohort": [_member_record(m) for m in r.cohort],
    }


def _member_record(m: Member) -> dict[str, Any]:
    return {"name": m.name, "host": m.host, "port": m.port, "zone": m.zone}


def to_record(rs: Ruleset) -> dict[str, Any]:
    benched = {"benched": [_member_record(m) for m in rs.benched]} if rs.benched else {}
    return benched | {
        "version": rs.version,
        "phase": rs.phase,
        "rule": _rule_record(rs.rule),
        "previous": None if rs.previous is None else _rule_record(rs.previous),
        "changed_by": rs.changed_by,
        "changed_at": rs.changed_at,
        "reason": rs.reason,
        "writer": rs.writer,
    }


def encode(rs: Ruleset) -> bytes:
    return json.dumps(to_record(rs), sort_keys=True, separators=(",", ":")).encode()


def field_of(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise InvalidInputError(f"{where}: missing field {key!r}")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise InvalidInputError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _policy_from(d: Any, where: str) -> Policy:
    if not isinstance(d, dict):
        raise InvalidInputError(f"{where}: policy must be an object")
    kind = field_of(d, "kind", str, where)
    if kind == "any":
        return AnyK(field_of(d, "k", int, where))
    if kind == "cross-zone":
        return CrossZone()
    return parse_policy(kind)


def _rule_from(d: Any, where: str) -> Rule:
    """The validated rule of a record's ``rule`` or ``previous`` object.

    Every version repeats rules (a joint one holds two, and the next stable one keeps the
    new rule), and every sidecar decodes every version it is sent: a rule validated once is
    reused for an object of the same ``repr``. That is exact for decoded JSON (``1``, ``1.0``
    and ``True`` differ in it), so nothing that would be refused is ever admitted by the cache.
    """
    key = repr(d)
    rule = _RULES.get(key)
    if rule is None:
        rule = _validated_rule(d, where)
        if len(_RULES) >= 256:
            _RULES.clear()
        _RULES[key] = rule
    return rule


_RULES: dict[str, Rule] = {}


def _validated_rule(d: Any, where: str) -> Rule:
    if not isinstance(d, dict):
        raise InvalidInputError(f"{where}: must be an object")
    members = _members_from(field_of(d, "cohort", list, where), f"{where}.cohort")
    if not members:
        raise InvalidInputError(f"{where}: the cohort is empty")
    return Rule(_policy_from(d.get("policy"), f"{where}.policy"), tuple(members))


def _members_from(items: list[Any], where: str) -> tuple[Member, ...]:
    members = []
    for i, m in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise InvalidInputError(f"{w}: must be an object")
        members.append(
            Member(
                field_of(m, "name", str, w),
                field_of(m, "host", str, w),
                field_of(m, "port", int, w),
                field_of(m, "zone", str, w),
            )
        )
    return tuple(members)


def from_record(d: Any) -> Ruleset:
    """Validate a decoded record; :class:`InvalidInputError` names the first problem found."""
    if not isinstance(d, dict):
        raise InvalidInputError("the ruleset record must be a JSON object")
    version = field_of(d, "version", int, "ruleset")
    rule = _rule_from(d.get("rule"), "rule")
    prev_raw = d.get("previous")
    previous = None if prev_raw is None else _rule_from(prev_raw, "previous")
    phase = field_of(d, "phase", str, "ruleset")
    expected = "stable" if previous is None else "joint"
    if phase != expected:
        raise InvalidInputError(f"ruleset: phase {phase!r} contradicts previous (expected {expected!r})")
    rs = Ruleset(
        version,
        rule,
        previous,
        str(d.get("changed_by", "")),
        str(d.get("changed_at", "")),
        str(d.get("reason", "")),
        str(d.get("writer", "")),
        tuple(sorted(_members_from(field_of(d, "benched", list, "ruleset"), "benched"))) if "benched" in d else (),
    )
    try:
        check_invariants(rs)
    except AssertionError as e:
        raise InvalidInputError(f"ruleset: {e}") from None
    return rs


def decode(raw: bytes, where: str) -> Ruleset:
    """Parse the bytes of a ruleset key; :class:`InvalidRecordError` says what and where."""
    try:
        return from_record(json.loads(raw))
    except (ValueError, InvalidInputError) as e:
        raise InvalidRecordError(f"{where} is not a valid pgcohort ruleset ({e}). " + RESTORE_HINT) from None
