"""Index ``function_app.py`` the way the Python worker does (v2 programming model).

The module is imported from the script root, the single top-level ``FunctionRegister`` instance
(``func.FunctionApp``) is found, and ``get_functions()`` gives each function's bindings, including
those of Blueprints registered with ``register_functions``. Binding fields are read from the
function's ``function.json`` form so the host sees exactly what the real host would.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from devstack.host.settings import HostConfigError, resolve_binding

log = logging.getLogger(__name__)

SCRIPT_FILE = "function_app.py"

BLOB_TRIGGER = "blobTrigger"
TIMER_TRIGGER = "timerTrigger"
HTTP_TRIGGER = "httpTrigger"
SUPPORTED_TRIGGERS = frozenset({BLOB_TRIGGER, TIMER_TRIGGER, HTTP_TRIGGER})


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One indexed function: its callable, resolved bindings and how to call it."""

    name: str
    func: Callable[..., Any]
    trigger: Mapping[str, Any]
    bindings: tuple[Mapping[str, Any], ...]
    raw_bindings: tuple[Mapping[str, Any], ...]
    is_async: bool
    parameters: Mapping[str, inspect.Parameter] = field(default_factory=dict)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type", ""))

    @property
    def trigger_param(self) -> str:
        return str(self.trigger.get("name", ""))

    @property
    def requires_context(self) -> bool:
        return "context" in self.parameters

    @property
    def function_id(self) -> str:
        """The id the real host uses in receipts, timer status and poison messages."""
        return f"Host.Functions.{self.name}"

    @property
    def log_name(self) -> str:
        return f"Functions.{self.name}"


@dataclass(frozen=True, slots=True)
class LoadedApp:
    functions: tuple[FunctionSpec, ...]
    skipped: tuple[str, ...]
    module: ModuleType

    def get(self, name: str) -> FunctionSpec | None:
        for spec in self.functions:
            if spec.name.lower() == name.lower():
                return spec
        return None


def import_app_module(script_root: Path) -> ModuleType:
    """Import ``function_app.py`` from ``script_root`` with the root on ``sys.path``."""
    path = script_root / SCRIPT_FILE
    if not path.is_file():
        raise HostConfigError(f"no {SCRIPT_FILE} in {script_root}")
    root = str(script_root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    # The worker imports it as ``function_app``. In-process (tests) another app may be loaded from
    # elsewhere: only the app in the working directory gets that name, so an app loaded from a
    # test folder never shadows the project's own ``import function_app``.
    name = "function_app"
    existing = sys.modules.get(name)
    other_app_holds_name = existing is not None and Path(
        getattr(existing, "__file__", "") or "").resolve() != path.resolve()
    if other_app_holds_name or Path.cwd().resolve() != script_root.resolve():
        name = f"function_app_{abs(hash(root)):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HostConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise HostConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def find_function_app(module: ModuleType) -> Any:
    """The one top-level ``FunctionRegister`` instance, as the worker's indexer requires."""
    import azure.functions as func

    found = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    unique = list({id(value): value for value in found}.values())
    if not unique:
        raise HostConfigError(f"no func.FunctionApp instance at the top level of {SCRIPT_FILE}")
    if len(unique) > 1:
        raise HostConfigError(f"more than one func.FunctionApp instance in {SCRIPT_FILE}")
    return unique[0]


def index_functions(module: ModuleType, settings: Mapping[str, str]) -> LoadedApp:
    """Every function of the app with ``%SETTING%`` resolved; unsupported triggers are skipped."""
    app = find_function_app(module)
    specs: list[FunctionSpec] = []
    skipped: list[str] = []
    # get_functions() validates name uniqueness against state it keeps: call it exactly once.
    for function in app.get_functions():
        name = str(function.get_function_name())
        document = json.loads(function.get_function_json())
        raw = tuple(dict(b) for b in document.get("bindings", []))
        triggers = [b for b in raw if str(b.get("type", "")).endswith("Trigger")]
        if not triggers:
            log.warning("Function '%s' has no trigger binding: skipped", name)
            skipped.append(name)
            continue
        trigger_type = str(triggers[0]["type"])
        if trigger_type not in SUPPORTED_TRIGGERS:
            log.warning(
                "Function '%s' uses trigger type '%s', which the local host does not support: "
                "skipped (supported: %s)", name, trigger_type,
                ", ".join(sorted(SUPPORTED_TRIGGERS)))
            skipped.append(name)
            continue
        if settings.get(f"AzureWebJobs.{name}.Disabled", "").lower() in {"true", "1"}:
            log.info("Function '%s' is disabled by the app setting AzureWebJobs.%s.Disabled",
                     name, name)
            skipped.append(name)
            continue
        resolved = tuple(resolve_binding(b, settings, function=name) for b in raw)
        for binding in resolved:
            kind = str(binding.get("type"))
            if binding is not resolved[raw.index(triggers[0])] and kind not in {"http"}:
                log.warning("Function '%s': binding '%s' of type '%s' is not supported by the "
                            "local host; its parameter receives None", name,
                            binding.get("name"), kind)
        user_func = function.get_user_function()
        specs.append(FunctionSpec(
            name=name,
            func=user_func,
            trigger=resolved[raw.index(triggers[0])],
            bindings=resolved,
            raw_bindings=raw,
            is_async=inspect.iscoroutinefunction(user_func),
            parameters=dict(inspect.signature(user_func).parameters),
        ))
        log.info("Indexed function '%s' (%s)", name, trigger_type)
    return LoadedApp(functions=tuple(specs), skipped=tuple(skipped), module=module)


def load_app(script_root: Path, settings: Mapping[str, str]) -> LoadedApp:
    return index_functions(import_app_module(script_root), settings)
