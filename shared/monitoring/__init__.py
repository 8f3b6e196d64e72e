"""Reading the app's health back: the named queries' runner, alerts, drift, the status report.

Imports analysis, telemetry and the floor only: what the ops jobs keep in storage reaches the
status report through loaders the composition root injects.
"""
