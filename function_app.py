"""The Functions app: wiring only. Every decision lives in ``shared/``."""

from __future__ import annotations

import azure.functions as func

from shared.blueprints import analysis
from shared.blueprints import probes as probes_bp
from shared.blueprints import status as status_bp
from shared.blueprints import tuning as tuning_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(analysis.bp)
app.register_functions(probes_bp.bp)
app.register_functions(status_bp.bp)
app.register_functions(tuning_bp.bp)
