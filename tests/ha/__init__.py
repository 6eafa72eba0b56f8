"""The failover drill: `python -m tests.ha` (`make ha-test`)."""
