"""Job configs (pipeline.config) are validated as a whole: every problem reported at once with its key path,
unknown keys named beside the known ones, values read as their types."""

import pytest

from pipeline.config import JobConfig


def test_every_config_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict({
            "source": {"input": "", "format": "xml"},
            "resources": {"batch_size": 0},
            "output": {"output": "/tmp/x", "formats": ["csv"]},
            "sampling": {"num_frames": 0},
            "bogus": {},
        })
    text = str(info.value)
    for needle in ("source.input: String should have at least 1 character", "source.format: Input should be",
                   "resources.batch_size: Input should be greater than or equal to 1", "output.formats.0:",
                   "sampling.num_frames: Input should be greater than or equal to 1", "bogus: unknown key"):
        assert needle in text, needle
    assert len(text.splitlines()) == 7  # the title and one line per problem


def test_unknown_keys_are_named_with_the_keys_there_are():
    with pytest.raises(ValueError, match=r"model\.lora_rank: unknown key; known: .*lora_alpha") as info:
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "model": {"lora_rank": 4}})
    assert "required" not in str(info.value)  # an unknown key is not also a missing one


def test_values_are_read_as_their_types_and_shapes_are_checked():
    cfg = JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y"}, "resources": {"batch_size": "8"}})
    assert cfg.resources.batch_size == 8  # a quoted number in YAML is that number
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y", "formats": "parquet"},
                             "resources": {"batch_size": "eight"}})
    text = str(info.value)
    assert "output.formats: Input should be a valid tuple" in text  # a string is not a list of formats
    assert "resources.batch_size: Input should be a valid integer" in text
    with pytest.raises(ValueError, match=r"output\.formats: Value error, must include parquet|must include parquet"):
        JobConfig.from_dict({"source": {"input": "x"}, "output": {"output": "y", "formats": ["webdataset"]}})
    with pytest.raises(ValueError, match=r"source: required[\s\S]*output: required"):
        JobConfig.from_dict({})
