"""Argo CD health for the three kinds: charts/kubetune/argocd/health.lua run by a real Lua interpreter (lupa's Lua
5.1, the dialect of Argo CD's gopher-lua) over the cases in health_test.yaml (Argo CD's own test format), in a sandbox holding only base functions as
Argo CD's is; the fixtures' status blocks are valid under the CRDs' status schemas; the argocd-cm example embeds the
same script; the Application examples point at paths that exist."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from lupa.lua51 import LuaRuntime  # Argo CD runs health scripts on gopher-lua, a Lua 5.1

from .test_crds import KIND_FILES, _draft4

ROOT = Path(__file__).resolve().parents[1]
ARGO = ROOT / "charts" / "kubetune" / "argocd"
SCRIPT = (ARGO / "health.lua").read_text()
CASES = yaml.safe_load((ARGO / "health_test.yaml").read_text())["tests"]
BASE = ("ipairs", "pairs", "tostring", "tonumber", "type", "next", "error", "pcall", "select")


def sandboxed(lua: LuaRuntime, source: str, obj: dict):
    """The chunk with only `obj` and base functions in scope."""
    env = lua.table_from({name: lua.globals()[name] for name in BASE})
    env["obj"] = lua.table_from(obj, recursive=True)
    chunk = lua.globals().loadstring(source, "health.lua")
    assert chunk is not None, "health.lua does not compile"
    lua.globals().setfenv(chunk, env)
    return chunk


def health(obj: dict) -> dict:
    result = sandboxed(LuaRuntime(), SCRIPT, obj)()
    return {"status": result["status"], "message": result["message"]}


def test_cases_cover_every_status_and_kind():
    statuses = {c["healthStatus"]["status"] for c in CASES}
    assert statuses == {"Healthy", "Progressing", "Degraded", "Suspended"}
    inputs = [yaml.safe_load((ARGO / c["inputPath"]).read_text()) for c in CASES]
    assert {d["kind"] for d in inputs} == {"FineTuneJob", "ConvertJob", "ChatEndpoint"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_health_lua(case):
    obj = yaml.safe_load((ARGO / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_fixture_status_matches_the_crd(case):
    obj = yaml.safe_load((ARGO / case["inputPath"]).read_text())
    if "status" not in obj:
        return
    schema = yaml.safe_load(KIND_FILES[obj["kind"]].read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    errors = [e.message for e in jsonschema.Draft4Validator(_draft4(schema["properties"]["status"]))
              .iter_errors(obj["status"])]
    assert not errors


def test_the_script_uses_no_standard_library():
    """A script that needed string/table/os would fail in Argo CD without useOpenLibs: the sandbox proves it does
    not, and a script that tries is caught."""
    probe = sandboxed(LuaRuntime(), "return string.upper(obj.status.phase)", {"status": {"phase": "Running"}})
    with pytest.raises(Exception, match="string"):
        probe()


def test_argocd_cm_example_embeds_this_script():
    cm = yaml.safe_load((ROOT / "examples" / "argocd" / "argocd-cm.yaml").read_text())
    customizations = yaml.safe_load(cm["data"]["resource.customizations"])
    assert customizations["kubetune.io/*"]["health.lua"].strip() == SCRIPT.strip()


def test_application_examples_point_at_this_repository_layout():
    apps = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples" / "argocd").glob("application*.yaml"))]
    assert len(apps) == 2
    for app in apps:
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        source = app["spec"]["source"]
        assert (ROOT / source["path"]).is_dir(), source["path"]
        for values in source.get("helm", {}).get("valueFiles", []):
            assert (ROOT / source["path"] / values).resolve().is_file(), values
