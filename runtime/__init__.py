"""Plumbing shared by the manager, relay and agents: settings, logging, NATS, supervision."""
