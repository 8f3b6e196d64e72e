"""The Functions app: wiring only. Every decision lives in ``shared/``."""

from __future__ import annotations

import azure.functions as func

from shared.blueprints import analysis

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(analysis.bp)
