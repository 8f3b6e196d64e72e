"""What can be checked about infra/, azure.yaml and the workflows without Azure or a Bicep compiler.

* every app setting the code reads is set on the Function App (infra/app/api.bicep) or is listed
  in ``LOCAL_ONLY`` with the reason it must not be set in Azure;
* role GUIDs in infra/rbac.bicep are the built-in roles their comments name;
* every registry module is a pinned Azure Verified Module and every local module path exists;
* the security-relevant parameters passed to AVM modules (checkov only sees raw resources, so it
  cannot check these) have the values the design relies on;
* the workflows and azd hooks run only commands that exist here, and CI runs the README's test
  command;
* the rendered scheduled query rules and workbook JSON are well-formed.

``scripts/infra-scan`` (the static check of ``devstack.infracheck``) is a step of the test
command, not a test; checkov runs in CI on the compiled ARM. Nothing here talks to Azure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
API_BICEP = INFRA / "app" / "api.bicep"
RBAC_BICEP = INFRA / "rbac.bicep"
MAIN_BICEP = INFRA / "main.bicep"
WORKFLOWS = REPO / ".github" / "workflows"

#: Settings the code reads that must NOT be app settings in Azure, and why.
LOCAL_ONLY: dict[str, str] = {
    "VISION_KEY": "the Vision account has disableLocalAuth; the app uses Entra ID "
    "(managed identity + Cognitive Services User)",
    "AzureWebJobsStorage": "a connection string (Azurite locally); Azure uses the identity-based "
    "AzureWebJobsStorage__blobServiceUri/__queueServiceUri/__credential/__clientId",
    "AzureWebJobsStorage__accountName": "alternative identity-based form; the explicit service "
    "URIs are set instead",
    "AzureWebJobsStorage__serviceUri": "alternative identity-based form; "
    "AzureWebJobsStorage__blobServiceUri is set instead",
    "PROBE_VISION_KEY": "key auth for the Vision probe; in Azure the probe uses the app's managed "
    "identity like the pipeline (disableLocalAuth)",
    "REGION_NAME": "set by the Functions platform itself in Azure (the probe's run location falls "
    "back to it); never overridden",
    "FUNCTIONS_WORKER_RUNTIME": "Flex Consumption takes the runtime from functionAppConfig.runtime "
    "and rejects this app setting",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "local stack only: stops the SDK calling out of "
    "an offline machine",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "local stack only: stops the SDK calling out of "
    "an offline machine",
}

#: Azure built-in roles (name → role definition GUID), from the Azure RBAC built-in roles list.
BUILT_IN_ROLES: dict[str, str] = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Cognitive Services User": "a97b65f3-24c7-4388-baec-2e87135dc908",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Monitoring Reader": "43d0d8ad-25c7-4714-9337-8ba259a9fe05",
    "Log Analytics Reader": "73c42c96-874c-492b-b04d-ab87d138a893",
}

_GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_MODULE_RE = re.compile(r"^\s*module\s+\w+\s+'([^']+)'", re.MULTILINE)
_AVM_PINNED_RE = re.compile(r"^br/public:avm/(res|ptn|utl)/[a-z0-9-]+(/[a-z0-9-]+)+:\d+\.\d+\.\d+$")


class _RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every key the settings parser asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_keys() -> set[str]:
    """Every app setting the code knows: what ``Settings.from_env`` reads + the local example."""
    env = _RecordingEnv()
    with pytest.raises(SettingsError):
        Settings.from_env(env)  # empty: fails, but only after asking for every key
    example = json.loads((REPO / "local.settings.json.example").read_text())
    return env.asked | set(example["Values"])


def bicep_app_settings() -> dict[str, str]:
    """``KEY: value`` lines between the BEGIN/END app settings markers of api.bicep."""
    text = API_BICEP.read_text()
    block = text.split("// BEGIN app settings", 1)[1].split("// END app settings", 1)[0]
    settings: dict[str, str] = {}
    for line in block.splitlines():
        match = re.match(r"^\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$", line)
        if match:
            settings[match.group(1)] = match.group(2)
    return settings


def all_bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


# --- app settings -------------------------------------------------------------------------------


def test_every_setting_is_wired_or_local_only() -> None:
    wired = bicep_app_settings()
    missing = sorted(k for k in settings_keys() if k not in wired and k not in LOCAL_ONLY)
    assert not missing, (
        f"app settings read by the code but neither set in {API_BICEP.relative_to(REPO)} nor "
        f"listed as local-only in this test: {missing}"
    )


def test_local_only_settings_are_not_set_in_azure() -> None:
    wired = bicep_app_settings()
    leaked = sorted(set(LOCAL_ONLY) & set(wired))
    assert not leaked, f"local-only settings set in Azure: {leaked}"
    assert all(reason.strip() for reason in LOCAL_ONLY.values())


def test_identity_based_storage_and_entra_telemetry() -> None:
    wired = bicep_app_settings()
    for key in (
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "AZURE_CLIENT_ID",
        "LOGS_WORKSPACE_ID",
        "LOGS_QUERY_ENDPOINT",
    ):
        assert key in wired, key
    assert wired["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert "Authorization=AAD" in wired["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    # Our code configures Azure Monitor; the worker doing it too would duplicate all telemetry.
    assert wired.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "'false'") == "'false'"


#: Stand-ins for the values the Bicep computes at deployment (endpoints, ids), to parse the rest.
_DEPLOY_TIME_VALUES: dict[str, str] = {
    "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.windows.net/",
    "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net/",
    "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
    "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": (
        "InstrumentationKey=00000000-0000-0000-0000-000000000002"
        ";IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
    ),
    "LOGS_WORKSPACE_ID": "00000000-0000-0000-0000-000000000003",
    "LOGS_QUERY_ENDPOINT": "https://api.loganalytics.io",
    "VISION_ENDPOINT": "https://cv-x.cognitiveservices.azure.com",
    "VISION_TIER": "S1",
    "VISION_FEATURES": "read,people,smartCrops",
    "IMAGES_CONTAINER": "images",
    "RESULTS_CONTAINER": "results",
    "FAILED_CONTAINER": "failed",
    "STATUS_CONTAINER": "status",
    "QUOTA_MONTHLY_CALLS": "1000000",
}


def test_azure_app_settings_parse_as_settings() -> None:
    """The literal values in api.bicep are valid for ``Settings.from_env`` (no bad default)."""
    env: dict[str, str] = {}
    for key, value in bicep_app_settings().items():
        literal = re.fullmatch(r"'([^']*)'", value)
        if literal:
            env[key] = literal.group(1)
        elif key in _DEPLOY_TIME_VALUES:
            env[key] = _DEPLOY_TIME_VALUES[key]
    Settings.from_env(env)  # raises SettingsError listing every bad value


def test_container_settings_match_what_the_infra_creates() -> None:
    main = MAIN_BICEP.read_text()
    containers = dict(
        re.findall(r"^\s+(images|results|failed|deadLetter): '([a-z0-9-]+)'", main, re.M)
    )
    defaults = Settings.from_env(
        {"VISION_ENDPOINT": "https://x.cognitiveservices.azure.com", "AzureWebJobsStorage": "x"}
    )
    assert containers["images"] == defaults.pipeline.images_container
    assert containers["results"] == defaults.pipeline.results_container
    assert containers["failed"] == defaults.pipeline.failed_container
    assert "'webjobs-blobtrigger-poison'" in main


# --- RBAC ---------------------------------------------------------------------------------------


def test_rbac_role_guids_match_their_names() -> None:
    pairs = re.findall(rf"'({_GUID})'\s*//\s*(.+?)\s*$", RBAC_BICEP.read_text(), re.MULTILINE)
    assert pairs, "no `'<guid>' // <role name>` lines in rbac.bicep"
    for guid, name in pairs:
        assert name in BUILT_IN_ROLES, f"unknown role name in rbac.bicep: {name!r}"
        assert BUILT_IN_ROLES[name] == guid, f"{name} is {BUILT_IN_ROLES[name]}, not {guid}"


def test_role_guids_live_only_in_rbac_bicep() -> None:
    for path in all_bicep_files():
        if path == RBAC_BICEP:
            continue
        found = [g for g in re.findall(_GUID, path.read_text()) if g in BUILT_IN_ROLES.values()]
        assert not found, f"role GUIDs outside rbac.bicep in {path.relative_to(REPO)}: {found}"


def test_app_identity_gets_the_roles_the_app_needs() -> None:
    rbac = RBAC_BICEP.read_text()
    app_block = rbac.split("var appAssignments", 1)[1].split("var userAssignments", 1)[0]
    for role in (
        "storageBlobDataOwner",
        "storageQueueDataContributor",
        "cognitiveServicesUser",
        "monitoringMetricsPublisher",
        "logAnalyticsReader",
    ):
        assert f"roles.{role}" in app_block, role


# --- modules ------------------------------------------------------------------------------------


def test_registry_modules_are_pinned_avm_and_local_modules_exist() -> None:
    refs: list[tuple[Path, str]] = [
        (path, ref) for path in all_bicep_files() for ref in _MODULE_RE.findall(path.read_text())
    ]
    assert refs
    for path, ref in refs:
        where = path.relative_to(REPO)
        if ref.startswith("br"):
            assert _AVM_PINNED_RE.match(ref), f"{where}: not a pinned br/public AVM module: {ref}"
        else:
            assert (path.parent / ref).is_file(), f"{where}: module file {ref} does not exist"


def _module_block(text: str, avm: str) -> str:
    start = text.index(f"'br/public:avm/{avm}:")
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    raise AssertionError(f"unterminated module block for {avm}")


@pytest.mark.parametrize(
    ("file", "avm", "expected"),
    [
        (
            "main.bicep",
            "res/storage/storage-account",
            [
                "allowSharedKeyAccess: false",
                "allowBlobPublicAccess: false",
                "minimumTlsVersion: 'TLS1_2'",
            ],
        ),
        ("app/monitoring.bicep", "res/insights/component", ["disableLocalAuth: true"]),
        (
            "app/vision.bicep",
            "res/cognitive-services/account",
            ["kind: 'ComputerVision'", "disableLocalAuth: true", "customSubDomainName: name"],
        ),
        (
            "app/api.bicep",
            "res/web/site",
            [
                "kind: 'functionapp,linux'",
                "name: 'python'",
                "version: '3.11'",
                "httpsOnly: true",
                "ftpsState: 'Disabled'",
                "type: 'UserAssignedIdentity'",
            ],
        ),
        ("main.bicep", "res/web/serverfarm", ["name: 'FC1'", "tier: 'FlexConsumption'"]),
    ],
)
def test_security_parameters_of_avm_modules(file: str, avm: str, expected: list[str]) -> None:
    block = _module_block((INFRA / file).read_text(), avm)
    for fragment in expected:
        assert fragment in block, f"{file} {avm}: missing `{fragment}`"


def test_outputs_are_upper_snake() -> None:
    outputs = re.findall(r"^output\s+(\w+)\s", MAIN_BICEP.read_text(), re.MULTILINE)
    assert outputs
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in outputs), outputs


def test_postdeploy_hook_reads_only_outputs_main_bicep_emits() -> None:
    outputs = set(re.findall(r"^output\s+(\w+)\s", MAIN_BICEP.read_text(), re.MULTILINE))
    hook = (INFRA / "hooks" / "postdeploy.sh").read_text()
    needed = set(re.search(r"for name in ([A-Z_ ]+); do", hook).group(1).split())  # type: ignore[union-attr]
    assert needed <= outputs, sorted(needed - outputs)


def test_blob_subscription_targets_the_blob_trigger(repo_app: Any) -> None:
    app = repo_app
    triggers = [
        f.get_function_name()
        for f in app.get_functions()
        if any(
            b.get("type") == "blobTrigger" for b in json.loads(f.get_function_json())["bindings"]
        )
    ]
    text = (INFRA / "app" / "blob-subscription.bicep").read_text()
    default = re.search(r"param functionName string = '(\w+)'", text)
    assert default and default.group(1) in triggers, triggers
    assert "Microsoft.Storage.BlobCreated" in text
    assert "/runtime/webhooks/blobs?functionName=Host.Functions." in text


# --- rendered alert rules and workbook ---------------------------------------------------------

_CRITERION_AGGREGATIONS = {"Average", "Count", "Maximum", "Minimum", "Total"}
_OPERATORS = {"Equals", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual"}


def test_rendered_scheduled_query_rules_have_the_documented_shape() -> None:
    rules = json.loads((INFRA / "alerts" / "scheduled-query-rules.json").read_text())
    assert isinstance(rules, list)
    for rule in rules:
        for key, kind in {
            "name": str,
            "displayName": str,
            "description": str,
            "severity": int,
            "evaluationFrequency": str,
            "windowSize": str,
            "autoMitigate": bool,
            "criterion": dict,
        }.items():
            assert isinstance(rule.get(key), kind), f"{rule.get('name')}: {key}"
        assert 0 <= rule["severity"] <= 4
        criterion = rule["criterion"]
        assert isinstance(criterion.get("query"), str) and criterion["query"].strip()
        assert criterion.get("timeAggregation") in _CRITERION_AGGREGATIONS
        assert criterion.get("operator") in _OPERATORS
        assert isinstance(criterion.get("threshold"), int | float)
        if criterion["timeAggregation"] != "Count":
            assert isinstance(criterion.get("metricMeasureColumn"), str)
    names = [r["name"] for r in rules]
    assert len(names) == len(set(names)), "duplicate rule names"


def test_workbook_json_is_a_notebook() -> None:
    workbook = json.loads((INFRA / "workbook" / "visionops.workbook.json").read_text())
    assert workbook["version"] == "Notebook/1.0"
    assert isinstance(workbook["items"], list)


# --- workflows and azd --------------------------------------------------------------------------


def _workflow_run_lines() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        for block in re.findall(r"run:\s*\|\n((?:\s{10,}.*\n?)+)|run:\s*(.+)", text):
            body = block[0] or block[1]
            lines.extend((path.name, line.strip()) for line in body.splitlines() if line.strip())
    return lines


def test_workflows_reference_only_existing_commands() -> None:
    lines = _workflow_run_lines()
    assert lines
    allowed_tools = {"azd", "az", "python", "python3", "pip", "echo", "cat", "test"}
    for workflow, line in lines:
        first = line.split()[0]
        if first.startswith(("./", "scripts/", "infra/", ".ci/")):
            script = REPO / first.removeprefix("./")
            assert script.is_file(), f"{workflow}: `{line}` runs a missing file"
            assert script.stat().st_mode & 0o111, f"{workflow}: {first} is not executable"
        else:
            assert first in allowed_tools, f"{workflow}: unexpected command `{line}`"


def test_ci_runs_the_readme_test_command_and_the_infra_scan() -> None:
    readme = (REPO / "README.md").read_text()
    assert "./scripts/test" in readme
    ci = [line for workflow, line in _workflow_run_lines() if workflow == "ci.yml"]
    assert "./scripts/test" in ci
    assert "./scripts/infra-scan" in ci
    # Compile + lint with the real Bicep CLI, then checkov on what it compiled.
    build = next(line for line in ci if line.startswith("./scripts/bicep-check"))
    arm_dir = build.split()[1]
    assert f"./scripts/infra-scan --arm {arm_dir}" in ci
    assert (REPO / "bicepconfig.json").is_file()


def test_deploy_workflow_uses_oidc_and_an_environment() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    assert "id-token: write" in deploy
    assert "environment:" in deploy
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID"):
        assert f"vars.{var}" in deploy
    assert "secrets." not in deploy, "OIDC only: no stored Azure secrets"


def test_azure_yaml_service_and_hooks() -> None:
    text = (REPO / "azure.yaml").read_text()
    assert re.search(
        r"^\s{2}api:\n\s{4}project: \.\n\s{4}language: python\n\s{4}host: function", text, re.M
    )
    for hook in re.findall(r"run:\s*(\S+)", text):
        script = REPO / hook.removeprefix("./")
        assert script.is_file() and script.stat().st_mode & 0o111, hook


# --- the scan itself ----------------------------------------------------------------------------


def test_the_test_command_runs_the_static_check_as_its_own_step() -> None:
    """``scripts/infra-scan`` runs in the test command (and CI), not inside pytest: it prints its
    counts and fails on a finding or a check of nothing; tests/unit/test_infracheck.py seeds
    mistakes into a copy of infra/ and shows each one fails it."""
    steps = [line.strip() for line in (REPO / "scripts" / "test").read_text().splitlines()]
    scan = [i for i, line in enumerate(steps) if line.endswith("scripts/infra-scan")]
    pytest_runs = [i for i, line in enumerate(steps) if "-m pytest" in line]
    waits = [i for i, line in enumerate(steps) if line.startswith('wait "$checks_pid"')]
    assert len(scan) == 1 and pytest_runs and len(waits) == 1, steps
    # started before the tests (beside them), and its result waited for after the last run
    assert scan[0] < pytest_runs[0] and waits[0] > pytest_runs[-1]


def test_poison_attempts_match_host_json() -> None:
    host = json.loads((REPO / "host.json").read_text())
    threshold = host["extensions"]["blobs"]["poisonBlobThreshold"]
    assert bicep_app_settings()["TELEMETRY_POISON_AFTER_ATTEMPTS"] == f"'{threshold}'"


def test_deploy_workflow_builds_once_previews_gates_and_rolls_back() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    steps = [line for workflow, line in _workflow_run_lines() if workflow == "deploy.yml"]
    release = [line.split()[1] for line in steps if line.startswith("./scripts/release")]
    # In this order: one package, the what-if, provision, deploy that package, gate, outcome.
    assert release == ["package", "preview", "provision", "deploy", "verify", "promote",
                       "rollback"]
    assert "actions/upload-artifact" in deploy and "actions/download-artifact" in deploy
    assert "if: failure() && steps.gate.outcome == 'failure'" in deploy
    script = (REPO / "scripts" / "release").read_text()
    assert "azd provision --preview" in script
    assert "azd deploy api --from-package" in script
    assert "python -m devstack.gate verify" in script.replace('"$python"', "python")
    assert "last-good.json" in script


def test_rolling_updates_are_on_by_default_and_reach_the_site() -> None:
    api = API_BICEP.read_text()
    assert "param rollingUpdates bool = true" in api
    assert "type: rollingUpdates ? 'RollingUpdate' : 'Recreate'" in api
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["rollingUpdates"]["value"] == "${ROLLING_UPDATES=true}"
    assert "rollingUpdates: rollingUpdates" in MAIN_BICEP.read_text()
