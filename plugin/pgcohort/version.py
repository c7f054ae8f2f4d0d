"""pgcohort: the cohort and durability policy of a PostgreSQL cluster as one CAS-versioned ruleset in etcd."""

__version__ = "0.5.0"
