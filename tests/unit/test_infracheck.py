"""The static infra check (``devstack.infracheck``, run by ``scripts/infra-scan``).

It must check something real on this repository's infra/ — these counts change only when the
Bicep does, and then this test says so — and it must fail on each kind of mistake it claims to
catch, seeded into a copy of infra/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devstack import infracheck

REPO = Path(__file__).resolve().parents[2]

#: What infra/ holds today: 8 files, 3 raw resources (the resource group, the workbook, the Event
#: Grid subscription), 16 registry module uses, 6 local module uses.
EXPECTED_COUNTS = {
    "files": 8,
    "resources": 3,
    "registry_modules": 16,
    "local_modules": 6,
}


@pytest.fixture
def infra_copy(tmp_path: Path) -> Path:
    target = tmp_path / "infra"
    shutil.copytree(REPO / "infra", target)
    return target


def _seed(infra: Path, rel: str, old: str, new: str) -> None:
    path = infra / rel
    text = path.read_text()
    assert text.count(old) == 1, f"seed anchor {old!r} not unique in {rel}"
    path.write_text(text.replace(old, new))


def _rules(report: infracheck.Report) -> set[str]:
    return {f.rule for f in report.findings}


def test_real_infra_passes_and_counts_what_it_checked() -> None:
    report = infracheck.check()
    assert report.ok, "\n".join(map(str, report.findings))
    counts = report.counts()
    assert {k: counts[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    # Every parameter passed to a module is compared with a declared list, and every security
    # flag found is compared with its safe value; both are far from zero.
    assert counts["parameters_checked"] >= 150
    assert counts["security_flags_checked"] >= 10


def test_catalog_covers_every_pinned_module_with_its_source() -> None:
    data = json.loads(infracheck.CATALOG_FILE.read_text())
    assert "bicep-registry-modules" in data["about"]
    for key, entry in data["modules"].items():
        path, version = key.split(":")
        assert entry["tag"] == f"{path}/{version}"
        assert len(entry["commit"]) == 40
        assert entry["parameters"], key
    # web/site types functionAppConfig from a resource API that knows siteUpdateStrategy.
    site = data["modules"]["avm/res/web/site:0.22.0"]["parameters"]["functionAppConfig"]
    assert site["derivedFrom"].startswith("Microsoft.Web/sites@2025-03-01")


def test_wrong_module_parameter_name_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "app/api.bicep", "    httpsOnly: true\n", "    httpOnly: true\n")
    report = infracheck.check(infra_copy)
    messages = [f.message for f in report.findings if f.rule == "unknown-parameter"]
    assert any("'httpOnly'" in m and "avm/res/web/site:0.22.0" in m for m in messages), messages
    # The correct name is now missing, and it is a flag that must be explicit.
    assert "security-missing" in _rules(report)


def test_public_blob_access_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "main.bicep", "allowBlobPublicAccess: false", "allowBlobPublicAccess: true")
    report = infracheck.check(infra_copy)
    assert [f.file for f in report.findings if f.rule == "security"] == ["infra/main.bicep"]


def test_public_container_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "main.bicep", "{ name: containers.images, publicAccess: 'None' }",
          "{ name: containers.images, publicAccess: 'Blob' }")
    report = infracheck.check(infra_copy)
    assert any("publicAccess is 'Blob'" in f.message for f in report.findings)


def test_local_auth_flag_as_expression_fails(infra_copy: Path) -> None:
    # A security flag must be a literal the check can read; an expression could be anything.
    _seed(infra_copy, "app/vision.bicep", "disableLocalAuth: true",
          "disableLocalAuth: !empty(name)")
    assert "security" in _rules(infracheck.check(infra_copy))


def test_missing_required_module_parameter_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "app/vision.bicep", "    kind: 'ComputerVision'\n", "")
    report = infracheck.check(infra_copy)
    assert any(f.rule == "missing-parameter" and "'kind'" in f.message for f in report.findings)


def test_disallowed_literal_value_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "main.bicep", "skuName: 'Standard_LRS'", "skuName: 'Standard_XYZ'")
    assert "disallowed-value" in _rules(infracheck.check(infra_copy))


def test_unrecorded_module_version_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "app/vision.bicep", "cognitive-services/account:0.10.1",
          "cognitive-services/account:0.99.0")
    assert "module-catalog" in _rules(infracheck.check(infra_copy))


def test_local_module_parameter_mismatch_fails(infra_copy: Path) -> None:
    _seed(infra_copy, "main.bicep", "    skuName: visionSkuName\n", "    sku: visionSkuName\n")
    report = infracheck.check(infra_copy)
    assert any(f.rule == "unknown-parameter" and "vision.bicep" in f.message
               for f in report.findings)


def test_site_update_strategy_needs_a_new_enough_api(infra_copy: Path) -> None:
    catalog = infracheck.load_catalog()
    site = catalog["avm/res/web/site:0.22.0"]["parameters"]["functionAppConfig"]
    site["derivedFrom"] = "Microsoft.Web/sites@2023-01-01#properties/functionAppConfig"
    report = infracheck.check(infra_copy, catalog)
    assert "api-version" in _rules(report)


def test_unparseable_file_fails(infra_copy: Path) -> None:
    (infra_copy / "broken.bicep").write_text("resource x 'Microsoft.Foo/bars@2020-01-01' = {\n")
    report = infracheck.check(infra_copy)
    assert [f.file for f in report.findings if f.rule == "parse"] == ["infra/broken.bicep"]
    assert report.files == EXPECTED_COUNTS["files"]


def test_empty_folder_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    report = infracheck.check(tmp_path)
    assert not report.ok
    assert "nothing-checked" in _rules(report)


def test_cli_exit_codes(infra_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert infracheck.main(["--infra", str(infra_copy)]) == 0
    assert "registry_modules=16" in capsys.readouterr().out
    _seed(infra_copy, "main.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true")
    assert infracheck.main(["--infra", str(infra_copy)]) == 1


# --- checkov reports (CI scans the compiled ARM) ------------------------------------------------


def _checkov(**summary: int) -> dict[str, object]:
    base = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    return {"check_type": "arm", "summary": {**base, **summary}}


def test_checkov_report_of_nothing_fails() -> None:
    # What checkov prints for this repo's Bicep: no resource it has policies for.
    assert infracheck.judge_checkov(_checkov()).problems()


def test_checkov_report_with_failures_or_parse_errors_fails() -> None:
    assert infracheck.judge_checkov(_checkov(passed=20, failed=1, resource_count=9)).problems()
    assert infracheck.judge_checkov(
        _checkov(passed=20, parsing_errors=1, resource_count=9)).problems()


def test_checkov_report_that_scanned_resources_passes(tmp_path: Path) -> None:
    report = [_checkov(passed=31, skipped=2, resource_count=12), _checkov(passed=4,
                                                                          resource_count=1)]
    summary = infracheck.judge_checkov(report)
    assert summary.problems() == []
    assert (summary.passed, summary.resource_count) == (35, 13)
    (tmp_path / "results_json.json").write_text(json.dumps(report))
    assert infracheck.main(["checkov-summary", str(tmp_path)]) == 0
    (tmp_path / "results_json.json").write_text(json.dumps(_checkov()))
    assert infracheck.main(["checkov-summary", str(tmp_path)]) == 1


def test_flags_inside_union_and_conditional_objects_are_checked(infra_copy: Path) -> None:
    # api.bicep builds siteConfig with union(); the TLS and FTPS flags inside still count.
    _seed(infra_copy, "app/api.bicep", "ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'")
    report = infracheck.check(infra_copy)
    assert any("ftpsState is 'AllAllowed'" in f.message for f in report.findings)
