"""Self-configuration: a dataset fingerprint, the decisions of a plan, and its time budget."""
