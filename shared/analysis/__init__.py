"""The analysis of one blob: read it, preprocess it, ask Vision, commit its document.

Pipeline, preprocessing (+ descriptors), the Vision client (+ its rate control and azure-core
policies), results and sources in storage, outputs, parking, and the observer that reports the
pipeline to ``shared.telemetry``. Imports only telemetry and the floor; receives its clients.
"""
