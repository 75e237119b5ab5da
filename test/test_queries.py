"""Query files: YAML and JSON parse to the same QuerySpecs; every malformed entry names its index and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from video3dllm_core.answer import ENGINE_TASKS
from video3dllm_core.queries import QueryFileError, QuerySpec, load_queries, parse_queries

YAML_TEXT = """\
- question: Where is the red chair?
  task: ground
  at_s: 2.5
- question: Describe the object here.
  task: caption
  target: [20.4, -11.2, 0.45]
- question: What is in front of me?
  task: situated_qa
  situation: I am sitting on the sofa.
- question: How many chairs are there?
"""

EXPECTED = [
    QuerySpec(0, "Where is the red chair?", "ground", None, None, 2.5),
    QuerySpec(1, "Describe the object here.", "caption", (20.4, -11.2, 0.45), None, None),
    QuerySpec(2, "What is in front of me?", "situated_qa", None, "I am sitting on the sofa.", None),
    QuerySpec(3, "How many chairs are there?", "auto", None, None, None),
]


def test_yaml_and_json_files_give_the_same_specs(tmp_path: Path) -> None:
    yaml_path = tmp_path / "q.yaml"
    yaml_path.write_text(YAML_TEXT)
    assert load_queries(yaml_path) == EXPECTED

    entries = [
        {"question": "Where is the red chair?", "task": "ground", "at_s": 2.5},
        {"question": "Describe the object here.", "task": "caption", "target": [20.4, -11.2, 0.45]},
        {"question": "What is in front of me?", "task": "situated_qa", "situation": "I am sitting on the sofa."},
        {"question": "How many chairs are there?"},
    ]
    json_path = tmp_path / "q.json"
    json_path.write_text(json.dumps(entries))
    assert load_queries(json_path) == EXPECTED
    # a mapping with the list under "queries" is accepted too, and at_s may be an integer
    wrapped = tmp_path / "wrapped.yml"
    wrapped.write_text("queries:\n  - {question: 'Where is it?', at_s: 0}\n")
    assert load_queries(wrapped) == [QuerySpec(0, "Where is it?", "auto", None, None, 0.0)]
    # to_dict writes the file form back: parsing it again gives the same spec
    again = parse_queries([{k: v for k, v in s.to_dict().items() if k != "index" and v is not None} for s in EXPECTED])
    assert again == EXPECTED


@pytest.mark.parametrize(
    ("entries", "fragments"),
    [
        ([{"task": "qa"}], ["entry 0", "'question' is missing"]),
        ([{"question": "ok"}, {"question": "  "}], ["entry 1", "'question'", "non-empty"]),
        ([{"question": 42}], ["entry 0", "'question'"]),
        ([{"question": "q", "task": "count"}], ["entry 0", "'task'", "'count'", "ground_multi", "caption"]),
        ([{"question": "q", "target": [1, 2]}], ["entry 0", "'target'", "[x, y, z]"]),
        ([{"question": "q", "target": [1, 2, "a"]}], ["'target'"]),
        ([{"question": "q", "target": [1, 2, float("nan")]}], ["'target'", "finite"]),
        ([{"question": "q", "target": "1,2,3"}], ["'target'"]),
        ([{"question": "q", "at_s": -1}], ["entry 0", "'at_s'", ">= 0"]),
        ([{"question": "q", "at_s": "soon"}], ["'at_s'", "'soon'"]),
        ([{"question": "q", "at_s": True}], ["'at_s'"]),
        ([{"question": "q", "situation": ""}], ["'situation'"]),
        ([{"question": "q"}, {"question": "r", "at": 3}], ["entry 1", "unknown field(s) at", "at_s"]),
        (["Where is the chair?"], ["entry 0", "bare text", "{question:"]),
        ([["q"]], ["entry 0", "mapping"]),
        ([], ["empty"]),
        ({"questions": []}, ["'queries'", "questions"]),
        ("just text", ["expected a list"]),
    ],
)
def test_each_malformed_entry_names_index_and_field(entries: object, fragments: list[str]) -> None:
    with pytest.raises(QueryFileError) as info:
        parse_queries(entries, "my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml")
    for fragment in fragments:
        assert fragment in message, message


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_queries(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(QueryFileError, match="is empty"):
        load_queries(empty)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- question: [unclosed\n")
    with pytest.raises(QueryFileError, match="not valid YAML.*line 2"):
        load_queries(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"question": "q",}]')
    with pytest.raises(QueryFileError, match="not valid JSON: line 1 column"):
        load_queries(bad_json)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(QueryFileError, match="not UTF-8"):
        load_queries(binary)
    assert isinstance(QueryFileError("x"), ValueError)  # the CLI turns ValueError into exit code 2


def test_every_engine_task_is_accepted() -> None:
    specs = parse_queries([{"question": "q", "task": t, "target": [0, 0, 0]} for t in ENGINE_TASKS])
    assert [s.task for s in specs] == list(ENGINE_TASKS)
    assert [s.index for s in specs] == list(range(len(ENGINE_TASKS)))
