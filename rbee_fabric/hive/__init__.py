"""rbee-hive: the pool manager daemon of one node."""
