"""What each light part of the job loads: the Ray stages beside the model never import torch or transformers,
and the downstream commands (query, gallery) import neither those nor Ray."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "vllm")


def loaded_after(module: str) -> set[str]:
    code = (f"import sys, json, {module}; "
            f"print(json.dumps([m for m in ('torch', 'transformers', 'vllm', 'ray', 'decord') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["pipeline.skip", "pipeline.sampler", "pipeline.sinks", "pipeline.resume",
                                    "pipeline.config", "pipeline.io.sources", "model.prompts", "model.settings"])
def test_light_ray_stages_and_settings_load_no_model_code(module):
    assert not loaded_after(module) & set(HEAVY)


@pytest.mark.parametrize("module", ["pipeline.tools.query", "pipeline.tools.gallery"])
def test_downstream_tools_load_neither_the_model_nor_ray(module):
    assert not loaded_after(module) & {*HEAVY, "ray", "decord"}
