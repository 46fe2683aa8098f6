"""The contract shared by manager, relay and agents: definitions, wire messages, subjects and codecs."""
