"""VisionOps: the deployed package of the Functions app (domain code, no Functions types)."""
