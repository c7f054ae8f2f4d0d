"""The pure core: rules, rulesets and the failover rule. Standard library only; no I/O."""
