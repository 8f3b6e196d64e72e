"""Static check of ``infra/`` that needs neither Azure nor a Bicep compiler.

What it verifies, file by file (every ``*.bicep`` under the folder):

* the file parses (pycep-parser, the Bicep parser checkov itself uses; CI also compiles with the
  real ``bicep build``, which is the authority);
* every registry module is a pinned Azure Verified Module whose published parameter list is
  recorded in ``infra/avm-modules.json`` (read from the module's ``main.json`` at its release
  tag), every parameter we pass is one the module declares, every parameter it requires is
  passed, and a literal value is one of the module's ``allowedValues``;
* every local module exists, and what we pass matches the ``param`` lines of its file;
* security flags (public blob access, shared keys, local auth, HTTPS, TLS, FTPS, basic
  publishing credentials), wherever they appear in a raw resource or a module's parameters, have
  the safe literal value, and the resources that must carry them do.

It counts what it checked and fails when any count is zero: a check of nothing is a failure,
never a pass. ``checkov-summary`` applies the same rule to a checkov JSON report (CI scans the
compiled ARM with checkov, which sees inside the modules).

    python -m devstack.infracheck                     # check infra/, exit 1 on any finding
    python -m devstack.infracheck --json              # the report as JSON
    python -m devstack.infracheck refresh-avm --brm DIR   # re-read the module catalog from a
                                                      # clone of Azure/bicep-registry-modules
    python -m devstack.infracheck checkov-summary REPORT  # judge a checkov JSON report

Local-only tooling: never imported by the deployed app.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CATALOG_FILE",
    "CheckovSummary",
    "Finding",
    "Report",
    "check",
    "judge_checkov",
    "load_catalog",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra"
CATALOG_FILE = INFRA_DIR / "avm-modules.json"
_REGISTRY_PREFIX = "public:"

#: Property → the safe literal values. Applied to every object in a resource body or in the
#: parameters passed to a module, at any depth (AVM modules take the resource's own names).
_SAFE_VALUES: dict[str, tuple[object, ...]] = {
    "allowBlobPublicAccess": (False,),
    "publicAccess": ("None",),
    "allowSharedKeyAccess": (False,),
    "disableLocalAuth": (True,),
    "DisableLocalAuth": (True,),
    "httpsOnly": (True,),
    "supportsHttpsTrafficOnly": (True,),
    "minimumTlsVersion": ("TLS1_2", "TLS1_3"),
    "minTlsVersion": ("1.2", "1.3"),
    "ftpsState": ("Disabled",),
    "allowCrossTenantReplication": (False,),
}

#: Flags a module (by registry path) or raw resource (by type) must set explicitly: an AVM
#: default can change between versions, an explicit value cannot.
_REQUIRED_FLAGS: dict[str, tuple[str, ...]] = {
    "avm/res/storage/storage-account": (
        "allowBlobPublicAccess", "allowSharedKeyAccess", "minimumTlsVersion",
    ),
    "avm/res/cognitive-services/account": ("disableLocalAuth",),
    "avm/res/insights/component": ("disableLocalAuth",),
    "avm/res/web/site": ("httpsOnly",),
    "Microsoft.Storage/storageAccounts": (
        "allowBlobPublicAccess", "allowSharedKeyAccess", "minimumTlsVersion",
    ),
    "Microsoft.CognitiveServices/accounts": ("disableLocalAuth",),
    "Microsoft.Insights/components": ("DisableLocalAuth",),
    "Microsoft.Web/sites": ("httpsOnly",),
}


#: Properties that exist only from a resource API version on (the module passes them through to
#: the resource with the API version its parameter type is derived from).
_MIN_API_VERSION: dict[str, str] = {
    "siteUpdateStrategy": "2023-12-01",  # Flex Consumption rolling updates
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, where it is."""

    file: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: [{self.rule}] {self.message}"


@dataclass(slots=True)
class Report:
    """What was checked (counts) and what was found."""

    files: int = 0
    resources: int = 0
    registry_modules: int = 0
    local_modules: int = 0
    parameters_checked: int = 0
    security_flags_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "files": self.files,
            "resources": self.resources,
            "registry_modules": self.registry_modules,
            "local_modules": self.local_modules,
            "parameters_checked": self.parameters_checked,
            "security_flags_checked": self.security_flags_checked,
        }

    @property
    def ok(self) -> bool:
        return not self.findings


def load_catalog(path: Path = CATALOG_FILE) -> dict[str, Any]:
    """``{"avm/res/x/y:1.2.3": {"parameters": {name: {...}}, ...}}`` from the catalog file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    modules: dict[str, Any] = data["modules"]
    return modules


@functools.cache
def _parser(*, add_line_numbers: bool) -> Any:
    """One pycep parser per process: building one compiles the Bicep grammar (~0.35 s of CPU),
    parsing with it is quick. No grammar cache on disk (``cache=False``)."""
    from pycep import BicepParser  # with the first check: its import costs time

    return BicepParser(add_line_numbers=add_line_numbers, cache=False)


def check(infra_dir: Path = INFRA_DIR, catalog: Mapping[str, Any] | None = None) -> Report:
    """Check every Bicep file under ``infra_dir``; see the module docstring for what."""
    catalog = load_catalog() if catalog is None else catalog
    parser = _parser(add_line_numbers=True)
    report = Report()
    parsed: dict[Path, dict[str, Any]] = {}
    for path in sorted(infra_dir.rglob("*.bicep")):
        rel = _rel(path, infra_dir)
        try:
            parsed[path] = dict(parser.parse(file_path=path))
        except Exception as exc:  # lark raises many types; each is a finding
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.findings.append(Finding(rel, 0, "parse", first))
            continue
        report.files += 1
    for path, tree in parsed.items():
        _check_file(path, tree, infra_dir, catalog=catalog, parser=parser, report=report)
    for name, count in report.counts().items():
        if count == 0:
            report.findings.append(Finding(
                _rel(infra_dir, infra_dir.parent), 0, "nothing-checked",
                f"0 {name.replace('_', ' ')}: a check of nothing is not a pass"))
    return report


@dataclass(frozen=True, slots=True)
class _Site:
    """Where a check looks (file, line, which declaration), and the report it writes to."""

    report: Report
    file: str
    line: int
    what: str

    def find(self, rule: str, message: str) -> None:
        self.report.findings.append(Finding(self.file, self.line, rule, f"{self.what}: {message}"))


def _check_file(path: Path, tree: Mapping[str, Any], infra_dir: Path, *,
                catalog: Mapping[str, Any], parser: Any, report: Report) -> None:
    rel = _rel(path, infra_dir)
    names = _identifiers(tree)
    for symbol, resource in (tree.get("resources") or {}).items():
        if resource.get("existing"):
            continue  # a reference to a resource declared elsewhere: nothing is deployed here
        report.resources += 1
        site = _Site(report, rel, int(resource.get("__start_line__", 0)), f"resource {symbol}")
        body = _unwrap(resource.get("config") or {}, "properties")
        _check_security(body, site)
        _require_flags(body, _REQUIRED_FLAGS.get(str(resource.get("type", "")), ()), site)
    for symbol, module in (tree.get("modules") or {}).items():
        site = _Site(report, rel, int(module.get("__start_line__", 0)), f"module {symbol}")
        params = _unwrap(module.get("config") or {}, "params").get("params") or {}
        if not isinstance(params, dict):
            site.find("module-params", "params is not an object literal")
            continue
        _check_security(params, site)
        detail: Mapping[str, Any] = module.get("detail") or {}
        if module.get("type") == "local":
            report.local_modules += 1
            _check_local_module(path.parent / str(detail.get("path", "")), params, site, parser)
            continue
        report.registry_modules += 1
        full = str(detail.get("full", ""))
        if not full.startswith(_REGISTRY_PREFIX + "avm/") or not detail.get("tag"):
            site.find("module-pin", f"not a pinned br/public AVM module: {full}")
            continue
        key = full.removeprefix(_REGISTRY_PREFIX)
        _require_flags(params, _REQUIRED_FLAGS.get(str(detail.get("path")), ()), site)
        entry = catalog.get(key)
        if entry is None:
            site.find("module-catalog", f"no published parameter list for {key} in "
                      f"{CATALOG_FILE.name} (python -m devstack.infracheck refresh-avm)")
            continue
        _check_registry_params(entry["parameters"], params, names,
                               _Site(report, rel, site.line, f"{site.what} ({key})"))


def _check_registry_params(declared: Mapping[str, Any], passed: Mapping[str, Any],
                           identifiers: set[str], site: _Site) -> None:
    for name, value in passed.items():
        site.report.parameters_checked += 1
        spec = declared.get(name)
        if spec is None:
            site.find("unknown-parameter", f"the module declares no parameter {name!r}")
            continue
        _check_min_api(name, value, str(spec.get("derivedFrom", "")), site)
        allowed = spec.get("allowedValues")
        if allowed and _is_literal(value, identifiers) and value not in allowed:
            site.find("disallowed-value", f"{name}={value!r} is not one of {allowed}")
    missing = sorted(n for n, spec in declared.items() if spec.get("required") and n not in passed)
    if missing:
        site.find("missing-parameter", f"required parameters not passed: {missing}")


def _check_min_api(name: str, value: object, derived_from: str, site: _Site) -> None:
    """A property only newer resource API versions know must reach one of those versions."""
    api = derived_from.partition("@")[2].partition("#")[0]
    for key, _ in _walk(value):
        needed = _MIN_API_VERSION.get(key)
        if needed and (not api or api < needed):
            site.find("api-version", f"{name}.{key} needs resource API >= {needed}; the "
                      f"module's parameter is typed from {derived_from or 'an untyped object'}")


def _check_local_module(module_file: Path, passed: Mapping[str, Any], site: _Site,
                        parser: Any) -> None:
    module_file = module_file.resolve()
    if not module_file.is_file():
        site.find("module-missing", f"module file {module_file.name} does not exist")
        return
    try:
        declared = parser.parse(file_path=module_file).get("parameters") or {}
    except Exception:  # a parse error, already reported as that file's finding
        return
    for name in passed:
        site.report.parameters_checked += 1
        if name not in declared:
            site.find("unknown-parameter", f"{module_file.name} declares no param {name!r}")
    missing = sorted(n for n, spec in declared.items()
                     if spec.get("default") is None and not str(spec.get("type", "")).endswith("?")
                     and n not in passed)
    if missing:
        site.find("missing-parameter",
                  f"params of {module_file.name} without a default not passed: {missing}")


def _check_security(body: object, site: _Site) -> None:
    for key, value in _walk(body):
        if key == "basicPublishingCredentialsPolicies" and isinstance(value, list):
            for policy in value:
                site.report.security_flags_checked += 1
                if not isinstance(policy, dict) or policy.get("allow") is not False:
                    site.find("security",
                              f"basic publishing credentials must be disallowed: {policy!r}")
            continue
        safe = _SAFE_VALUES.get(key)
        if safe is None:
            continue
        site.report.security_flags_checked += 1
        if isinstance(value, dict | list) or value not in safe:
            site.find("security",
                      f"{key} is {value!r}; must be the literal {' or '.join(map(repr, safe))}")


def _require_flags(body: object, flags: Sequence[str], site: _Site) -> None:
    present = {key for key, _ in _walk(body)}
    for flag in flags:
        if flag not in present:
            site.find("security-missing", f"{flag} must be set explicitly")


#: Expressions whose operands are still object literals we declare: ``union(a, b)`` and
#: ``cond ? a : b`` (the flags inside them are checked like any other).
_OBJECT_COMBINERS = {("function", "union"), ("operator", "conditional")}


def _walk(node: object) -> Iterator[tuple[str, object]]:
    """Every ``key: value`` pair of an object literal, at any depth: through ``union()`` and
    ``?:`` into their object operands, never into other expressions."""
    if isinstance(node, dict):
        for kind in ("function", "operator"):
            expression = node.get(kind)
            if not isinstance(expression, dict):
                continue
            if (kind, expression.get("type")) in _OBJECT_COMBINERS:
                operands = expression.get("parameters") or expression.get("operands") or {}
                for name, operand in operands.items():
                    if name != "condition":
                        yield from _walk(operand)
            return  # an expression: only a combiner's object operands are declarations
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("__"):
                continue
            yield str(key), value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _unwrap(config: Mapping[str, Any], wanted: str) -> Mapping[str, Any]:
    """The body under pycep's loop / condition wrappers (``{"config": {...}}``)."""
    while wanted not in config and isinstance(config.get("config"), dict):
        config = config["config"]
    return config


def _identifiers(tree: Mapping[str, Any]) -> set[str]:
    """Names a bare string may be (pycep gives identifiers and string literals alike as str)."""
    names: set[str] = set()
    for section in ("parameters", "variables", "resources", "modules"):
        names.update((tree.get(section) or {}).keys())
    return names


def _is_literal(value: object, identifiers: set[str]) -> bool:
    if isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and value not in identifiers and "${" not in value


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.parent))
    except ValueError:
        return str(path)


# --- the module catalog ---------------------------------------------------------------------------


def refresh_catalog(brm_git_dir: Path, infra_dir: Path = INFRA_DIR) -> dict[str, Any]:
    """Read each pinned module's ``main.json`` at its release tag from a registry-modules clone."""
    parser = _parser(add_line_numbers=False)
    refs: set[tuple[str, str]] = set()
    for path in sorted(infra_dir.rglob("*.bicep")):
        modules_of_file: Mapping[str, Any] = parser.parse(file_path=path).get("modules") or {}
        for module in modules_of_file.values():
            detail: Mapping[str, Any] = module.get("detail") or {}
            if module.get("type") != "local" and detail.get("tag"):
                refs.add((str(detail["path"]), str(detail["tag"])))
    modules: dict[str, Any] = {}
    for module_path, version in sorted(refs):
        tag = f"{module_path}/{version}"
        main_json = json.loads(_git(brm_git_dir, "show", f"{tag}:{module_path}/main.json"))
        modules[f"{module_path}:{version}"] = {
            "tag": tag,
            "commit": _git(brm_git_dir, "rev-list", "-n", "1", tag).strip(),
            "parameters": {name: _param_spec(spec, main_json.get("definitions") or {})
                           for name, spec in main_json["parameters"].items()},
        }
    return {
        "about": "Parameters each pinned Azure Verified Module declares, read from the module's "
                 "compiled main.json at its release tag in the Azure/bicep-registry-modules "
                 "repository (tag and commit recorded per module). Regenerate with "
                 "`python -m devstack.infracheck refresh-avm --brm <clone>` after changing a pin.",
        "modules": modules,
    }


def _param_spec(spec: Mapping[str, Any], definitions: Mapping[str, Any]) -> dict[str, Any]:
    ref = str(spec.get("$ref", ""))
    resolved = definitions.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
    nullable = bool(spec.get("nullable") or resolved.get("nullable"))
    out: dict[str, Any] = {
        "type": spec.get("type") or resolved.get("type") or "object",
        "required": "defaultValue" not in spec and not nullable,
    }
    if "allowedValues" in spec:
        out["allowedValues"] = spec["allowedValues"]
    derived = (spec.get("metadata") or {}).get("__bicep_resource_derived_type!")
    if derived:
        out["derivedFrom"] = derived["source"]
    return out


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True,
                          capture_output=True, text=True).stdout


# --- checkov reports ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckovSummary:
    passed: int
    failed: int
    skipped: int
    parsing_errors: int
    resource_count: int

    def problems(self) -> list[str]:
        out = []
        if self.resource_count == 0:
            out.append("checkov scanned 0 resources: a scan of nothing is not a pass")
        if self.passed + self.failed == 0:
            out.append("checkov ran 0 checks")
        if self.failed:
            out.append(f"{self.failed} failed checks")
        if self.parsing_errors:
            out.append(f"{self.parsing_errors} files checkov could not parse")
        return out


def judge_checkov(report: object) -> CheckovSummary:
    """Sum the summaries of a checkov JSON report (one framework = a dict, several = a list)."""
    reports = report if isinstance(report, list) else [report]
    totals = dict.fromkeys(("passed", "failed", "skipped", "parsing_errors", "resource_count"), 0)
    for item in reports:
        summary = item.get("summary", item) if isinstance(item, dict) else {}
        for key in totals:
            totals[key] += int(summary.get(key, 0))
    return CheckovSummary(**totals)


# --- command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.infracheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--infra", type=Path, default=INFRA_DIR)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = parser.add_subparsers(dest="command")
    refresh = sub.add_parser("refresh-avm", help="rewrite the module catalog")
    refresh.add_argument("--brm", type=Path, required=True,
                         help="git dir of an Azure/bicep-registry-modules clone with its tags")
    summary = sub.add_parser("checkov-summary", help="judge a checkov JSON report")
    summary.add_argument("report", type=Path, help="results_json.json or the folder holding it")
    args = parser.parse_args(argv)

    if args.command == "refresh-avm":
        catalog = refresh_catalog(args.brm, args.infra)
        CATALOG_FILE.write_text(json.dumps(catalog, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {len(catalog['modules'])} modules to {CATALOG_FILE.name}")
        return 0
    if args.command == "checkov-summary":
        path: Path = args.report
        data = json.loads((path / "results_json.json" if path.is_dir() else path).read_text())
        result = judge_checkov(data)
        print("checkov summary: " + ", ".join(f"{k}={v}" for k, v in asdict(result).items()))
        for problem in result.problems():
            print(f"checkov: {problem}", file=sys.stderr)
        return 1 if result.problems() else 0

    report = check(args.infra)
    if args.json:
        print(json.dumps({"counts": report.counts(),
                          "findings": [asdict(f) for f in report.findings]}, indent=1))
    else:
        for finding in report.findings:
            print(finding, file=sys.stderr)
        print("infra check: " + ", ".join(f"{k}={v}" for k, v in report.counts().items())
              + f", findings={len(report.findings)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
