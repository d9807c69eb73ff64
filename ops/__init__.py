"""Operator commands: the `tally` command line, the local stack (`tally up/status/down`),
consumer-group lag, demo traffic and migrating a running stack's warehouse.

Nothing in the pipeline imports this package: it drives the stages, it is not one."""
