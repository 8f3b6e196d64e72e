"""``scripts/release`` (the deploy workflow's steps) against fake ``azd``, ``az`` and gate.

The fakes are small shell scripts on ``PATH`` that log their arguments and keep the
``releases`` container as a folder; ``PYTHON`` is a wrapper that logs ``devstack.gate`` calls
(the gate's own decisions are tested in test_gate.py) and runs every other snippet with the real
interpreter. The script is copied into a scratch folder so ``dist/`` and ``shared/version.txt``
land there, never in the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

AZD = """#!/usr/bin/env bash
echo "azd $*" >> "$FAKE_LOG"
case "$1 $2" in
  "env get-value") grep "^$3=" "$FAKE_ENV" | cut -d= -f2- ;;
  "package api") mkdir -p "$(dirname "$4")"; echo "zip of $(cat shared/version.txt)" > "$4" ;;
esac
"""
AZ = """#!/usr/bin/env bash
echo "az $*" >> "$FAKE_LOG"
arg() {
  local want=$1; shift
  while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done
}
case "$1 $2 $3" in
  "storage blob download") src="$FAKE_RELEASES/$(arg --name "$@")"; [ -f "$src" ] || exit 3
                           cp "$src" "$(arg --file "$@")" ;;
  "storage blob upload") cp "$(arg --file "$@")" "$FAKE_RELEASES/$(arg --name "$@")" ;;
  "functionapp keys list") echo "fake-key" ;;
  "account get-access-token "*) echo "fake-token" ;;
esac
"""
PYTHON = f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m devstack.gate" ]; then
  echo "gate $*" >> "$FAKE_LOG"
  [ "$3" = "verify" ] && [ "$(grep -c . "$FAKE_VERDICTS" 2>/dev/null)" != 0 ] || exit 0
  code=$(head -n1 "$FAKE_VERDICTS"); sed -i 1d "$FAKE_VERDICTS"; exit "$code"
fi
exec {sys.executable} "$@"
"""


class Fakes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "calls.log"
        self.releases = root / "releases"
        self.releases.mkdir()
        self.verdicts = root / "verdicts"
        (root / "repo" / "scripts").mkdir(parents=True)
        (root / "repo" / "shared").mkdir()
        shutil.copy2(REPO / "scripts" / "release", root / "repo" / "scripts" / "release")
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name, text in (("azd", AZD), ("az", AZ), ("python-fake", PYTHON)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        env_file = root / "azd.env"
        env_file.write_text("\n".join([
            "APPLICATIONINSIGHTS_CONNECTION_STRING=InstrumentationKey=x;IngestionEndpoint=http://x/",
            "AZURE_STORAGE_ACCOUNT_NAME=st", "RELEASES_CONTAINER=releases",
            "AZURE_RESOURCE_GROUP=rg", "AZURE_FUNCTION_APP_NAME=func",
            "SERVICE_API_URI=https://func.example"]) + "\n")
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "PYTHON": str(bin_dir / "python-fake"), "FAKE_LOG": str(self.log),
                    "FAKE_ENV": str(env_file), "FAKE_RELEASES": str(self.releases),
                    "FAKE_VERDICTS": str(self.verdicts), "CONFIG_SETTLE_SECONDS": "0"}
        self.env.pop("GITHUB_STEP_SUMMARY", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.root / "repo" / "scripts" / "release"), *args],
                              env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path)


def test_package_stamps_the_version_into_the_package(fakes: Fakes) -> None:
    assert fakes.run("package", "abc").returncode == 0
    assert (fakes.root / "repo" / "shared" / "version.txt").read_text() == "abc\n"
    zip_path = fakes.root / "repo" / "dist" / "visionops-abc.zip"
    assert zip_path.read_text() == "zip of abc\n"
    assert "azd package api --output-path dist/visionops-abc.zip --no-prompt" in fakes.calls()


def test_provision_then_the_settle_gap(fakes: Fakes) -> None:
    done = fakes.run("provision")
    assert done.returncode == 0
    assert fakes.calls() == ["azd provision --no-prompt"]
    assert "waiting 0 s before the code update" in done.stdout


def test_deploy_marks_then_deploys_the_given_package(fakes: Fakes) -> None:
    (fakes.releases / "last-good.json").write_text(json.dumps({"version": "v1"}))
    assert fakes.run("deploy", "v2", "dist/visionops-v2.zip").returncode == 0
    calls = [c for c in fakes.calls() if c.startswith(("gate", "azd deploy"))]
    assert calls == [
        "gate -m devstack.gate marker --version v2 --kind deploy --outcome started --previous v1",
        "azd deploy api --from-package dist/visionops-v2.zip --no-prompt"]


def test_promote_records_the_last_good_package(fakes: Fakes) -> None:
    zip_path = fakes.root / "v2.zip"
    zip_path.write_text("package v2")
    assert fakes.run("promote", "v2", str(zip_path)).returncode == 0
    assert (fakes.releases / "v2.zip").read_text() == "package v2"
    assert json.loads((fakes.releases / "last-good.json").read_text())["version"] == "v2"
    assert fakes.calls()[-1].startswith(
        "gate -m devstack.gate marker --version v2 --kind deploy --outcome promoted")


def test_rollback_redeploys_the_last_good_package_and_gates_it(fakes: Fakes) -> None:
    (fakes.releases / "last-good.json").write_text(json.dumps({"version": "v1"}))
    (fakes.releases / "v1.zip").write_text("package v1")
    fakes.verdicts.write_text("0\n")  # the gate passes on v1
    done = fakes.run("rollback", "v2")
    assert done.returncode == 1, "a rollback always fails the run"
    assert (fakes.root / "repo" / "dist" / "visionops-v1.zip").read_text() == "package v1"
    calls = [c for c in fakes.calls() if c.startswith(("gate", "azd deploy"))]
    assert [c.split(" --previous")[0].replace(" --kind", "").replace(" --outcome", "")
            for c in calls if "marker" in c] == [
        "gate -m devstack.gate marker --version v2 deploy rolled_back",
        "gate -m devstack.gate marker --version v1 rollback started",
        "gate -m devstack.gate marker --version v1 rollback promoted"]
    assert "azd deploy api --from-package dist/visionops-v1.zip --no-prompt" in calls
    verify = next(c for c in calls if " verify " in c)
    assert "--version v1" in verify and "--base-url https://func.example" in verify
    assert "rolled back from v2 to v1; the gate passed on v1" in done.stdout


def test_rollback_whose_target_fails_the_gate_too_says_so(fakes: Fakes) -> None:
    (fakes.releases / "last-good.json").write_text(json.dumps({"version": "v1"}))
    (fakes.releases / "v1.zip").write_text("package v1")
    fakes.verdicts.write_text("1\n")
    done = fakes.run("rollback", "v2")
    assert done.returncode == 1
    assert "v1 FAILED the gate too" in done.stdout
    assert any("--version v1 --kind rollback --outcome failed" in c for c in fakes.calls())


def test_rollback_without_a_last_good_package_deploys_nothing(fakes: Fakes) -> None:
    done = fakes.run("rollback", "v2")
    assert done.returncode == 1
    assert "nothing to roll back to" in done.stdout
    assert not any(c.startswith("azd deploy") for c in fakes.calls())
    assert any("--version v2 --kind deploy --outcome failed" in c for c in fakes.calls())
