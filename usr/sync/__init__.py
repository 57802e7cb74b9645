"""Sync: the framed protocol, its two ends (client, server), and the sync engine + audit."""
