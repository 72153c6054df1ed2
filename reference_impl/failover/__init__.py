"""Failover and high availability: downtime, lost acknowledged writes and split brain, per replication design."""
