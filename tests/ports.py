"""Ports for the servers tests start themselves (PostgreSQL, Patroni, etcd): the bench's chooser."""

from bench.ports import free_port

__all__ = ["free_port"]
