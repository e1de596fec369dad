"""The manifest's JSON Schema: the same keys as the loader, and it agrees on what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from envrunner._manifest import ENV_KEYS, PIP_KEYS, SMOKE_KEYS, TOP_KEYS, load_manifest
from envrunner._runtime.errors import ManifestError
from envrunner._schema import manifest_schema

ROOT = Path(__file__).resolve().parent.parent


def test_envrunner_schema_prints_a_valid_draft_07_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "envrunner", "schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(result.stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema == manifest_schema()


def test_the_schema_knows_exactly_the_keys_the_loader_reads() -> None:
    schema = manifest_schema()
    settings = schema["properties"]["defaults"]
    assert set(schema["properties"]) == set(TOP_KEYS)
    assert set(settings["properties"]) == set(ENV_KEYS)
    assert set(settings["properties"]["pip"]["properties"]) == set(PIP_KEYS)
    smoke_item = settings["properties"]["smoke"]["items"]["oneOf"][1]
    assert set(smoke_item["properties"]) == set(SMOKE_KEYS)


@pytest.mark.parametrize("manifest", sorted((ROOT / "environments").glob("*.yaml")), ids=str)
def test_every_shipped_manifest_passes_the_schema(manifest: Path) -> None:
    jsonschema.validate(yaml.safe_load(manifest.read_text()), manifest_schema())
    load_manifest(manifest)


BAD = {
    "unknown key": "version: 1\nenvironments:\n  a:\n    pyton: '3.12'\n",
    "no workers": "version: 1\nenvironments:\n  a:\n    workers: 0\n",
    "bad installer": "version: 1\nenvironments:\n  a:\n    installer: conda\n",
    "bad name": "version: 1\nenvironments:\n  'a b':\n    workers: 1\n",
    "bad version": "version: 2\nenvironments:\n  a:\n    workers: 1\n",
    "bad smoke": "version: 1\nenvironments:\n  a:\n    smoke: [{exit_code: 1}]\n",
    "negative timeout": "version: 1\nenvironments:\n  a:\n    timeout: -1\n",
}


@pytest.mark.parametrize("case", list(BAD))
def test_the_schema_and_the_loader_refuse_the_same_mistakes(tmp_path: Path, case: str) -> None:
    path = tmp_path / "environments.yaml"
    path.write_text(BAD[case])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(path.read_text()), manifest_schema())
    with pytest.raises(ManifestError):
        load_manifest(path)
