"""One ``func.Blueprint`` per trigger family; each handler is a thin adapter over ``shared``."""
