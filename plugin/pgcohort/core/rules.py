"""Members, policies and rules, and how a rule is rendered as ``synchronous_standby_names``.

Pure: no I/O. A **rule** is a policy plus a cohort. A policy says how many standby
acknowledgements make a write durable:

* ``any K``      — K acks from the cohort's standbys, rendered ``ANY K (s1, s2, ...)``;
* ``cross-zone`` — one ack from a standby outside the primary's zone, rendered
  ``ANY 1 (...)`` over those standbys. K > 1 across zones cannot be expressed in
  PostgreSQL's syntax, so it does not exist here.

Every rule also defines, for a failed primary, the **electorate** E (the members that may
hold an acknowledged write) and the ack count K: any acknowledged write is on at least K
members of E.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from pgcohort.errors import InvalidInputError, RefusedError

# PostgreSQL truncates application_name to NAMEDATALEN-1 = 63 bytes and matches
# synchronous_standby_names entries case-insensitively; a narrower alphabet keeps names
# usable as Patroni member names, etcd key segments and shell words.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}")
_ZONE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9_.:\-\[\]]{1,253}")
# Unquoted identifiers of syncrep_scanner.l; ANY and FIRST are its keywords.
_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_KEYWORDS = frozenset({"any", "first"})


def check_member_name(name: object) -> str:
    """Return ``name`` if it is a valid member name (it becomes an ``application_name``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid member name {name!r}: a member name becomes the standby's "
            "application_name, so it must be 1-63 characters of letters, digits, '_', '.' "
            "or '-', not starting with '.' or '-'"
        )
    return name


def quote_standby_name(name: str) -> str:
    """Quote ``name`` for ``synchronous_standby_names`` when the parser needs it."""
    if _BARE_IDENT.fullmatch(name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, order=True)
class Member:
    """A PostgreSQL node: its name (= application_name), where it listens, and its zone."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    zone: str = "default"

    def __post_init__(self) -> None:
        check_member_name(self.name)
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host):
            raise InvalidInputError(f"member {self.name}: invalid host {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InvalidInputError(f"member {self.name}: port must be 1-65535, not {self.port!r}")
        if not isinstance(self.zone, str) or not _ZONE.fullmatch(self.zone):
            raise InvalidInputError(
                f"member {self.name}: invalid zone {self.zone!r} (1-63 of letters, digits, '_', '.', '-')"
            )

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class AnyK:
    """``any K``: K acknowledgements from any of the cohort's standbys."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidInputError(
                f"invalid policy 'any {self.k}': K must be a whole number >= 1 "
                "(K = 0 would be asynchronous replication, which no failover can make safe)"
            )

    def __str__(self) -> str:
        return f"any {self.k}"


@dataclass(frozen=True)
class CrossZone:
    """``cross-zone``: one acknowledgement from a standby outside the primary's zone."""

    k: int = 1

    def __post_init__(self) -> None:
        if self.k != 1:
            raise InvalidInputError(
                "cross-zone with more than one ack cannot be expressed in PostgreSQL's "
                "synchronous_standby_names; use 'cross-zone' (one ack) or 'any K'"
            )

    def __str__(self) -> str:
        return "cross-zone"


Policy = AnyK | CrossZone


_MEMBER_SPEC = re.compile(r"(?P<name>[^@/]+)(?:@(?P<host>\[[^\]]+\]|[^/:\[]+)(?::(?P<port>\d+))?)?(?:/(?P<zone>.+))?")


def parse_member(spec: str, *, host: str | None = None, port: int | None = None, zone: str | None = None) -> Member:
    """``NAME[@HOST[:PORT]][/ZONE]``, with the keyword arguments filling in what the spec leaves out."""
    m = _MEMBER_SPEC.fullmatch(spec)
    if not m:
        raise InvalidInputError(
            f"invalid member {spec!r}: write NAME[@HOST[:PORT]][/ZONE], e.g. pg1@10.0.0.5:5432/zone-a"
        )
    return Member(
        m["name"],
        m["host"] or host or "127.0.0.1",
        int(m["port"]) if m["port"] else (port or 5432),
        m["zone"] or zone or "default",
    )


def parse_policy(text: str) -> Policy:
    """Parse ``any K`` or ``cross-zone`` (case and spacing are free)."""
    words = text.strip().lower().replace("_", "-").split()
    if words == ["cross-zone"]:
        return CrossZone()
    if len(words) == 2 and words[0] == "any" and words[1].isdigit():
        return AnyK(int(words[1]))
    raise InvalidInputError(f"invalid policy {text!r}: write 'any K' (for example 'any 1') or 'cross-zone'")


@dataclass(frozen=True)
class Rule:
    """A policy and a cohort. The cohort is kept sorted by name, so equal rules compare equal."""

    policy: Policy
    cohort: tuple[Member, ...]

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.cohort, key=lambda m: m.name))
        object.__setattr__(self, "cohort", ordered)
        seen: set[str] = set()
        for m in ordered:
            # synchronous_standby_names matches application_name case-insensitively.
            key = m.name.lower()
            if key in seen:
                raise InvalidInputError(
                    f"duplicate member {m.name!r}: PostgreSQL matches standby names "
                    "case-insensitively, so names must differ in more than case"
                )
            seen.add(key)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.cohort)

    def member(self, name: str) -> Member | None:
        for m in self.cohort:
            if m.name == name:
                return m
        return None

    def acks(self) -> int:
        """K: how many standby acknowledgements make a write durable under this rule."""
        return self.policy.k

    def electorate(self, primary: str) -> tuple[Member, ...]:
        """E: the members that may acknowledge a write when ``primary`` is the primary."""
        if isinstance(self.policy, CrossZone):
            p = self.member(primary)
            zone = p.zone if p is not None else None
            return tuple(m for m in self.cohort if m.name != primary and m.zone != zone)
        return tuple(m for m in self.cohort if m.name != primary)

    def check(self, primary: str) -> None:
        """Refuse a rule that the primary cannot enforce."""
        if self.member(primary) is None:
            raise RefusedError(f"the primary {primary!r} must be in the cohort ({self.show()})")
        e = self.electorate(primary)
        if isinstance(self.policy, CrossZone):
            if not e:
                zone = self.member(primary).zone  # type: ignore[union-attr]
                raise RefusedError(
                    f"cross-zone needs a standby outside the primary's zone {zone!r}, and the "
                    f"cohort ({self.show()}) has none: add a member in another zone first"
                )
        elif self.policy.k > len(e):
            raise RefusedError(
                f"policy '{self.policy}' needs {self.policy.k} standbys but the cohort "
                f"({self.show()}) has {len(e)} besides the primary {primary!r}: add members "
                f"first or lower K"
            )

    def render(self, primary: str) -> str:
        """The ``synchronous_standby_names`` value that enforces this rule on ``primary``."""
        self.check(primary)
        names = ", ".join(quote_standby_name(m.name) for m in self.electorate(primary))
        return f"ANY {self.acks()} ({names})"

    def show(self) -> str:
        """``any 1 of (a b c)`` — how the design documents write a rule."""
        return f"{self.policy} of ({' '.join(m.name for m in self.cohort)})"

    def __str__(self) -> str:
        return self.show()
