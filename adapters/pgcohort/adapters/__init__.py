"""Adapters between pgcohort's protocol and an HA manager or PostgreSQL itself."""
