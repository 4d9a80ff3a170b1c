"""Replicas on separate hosts: who is active (broker/lease.py), and the state a standby
needs to take over, kept in the broker's replicated state stream (broker/statestream.py)."""
