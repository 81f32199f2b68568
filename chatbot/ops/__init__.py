"""The operations around the line and the flow: processes and the launcher, logs, metrics,
timing."""
