"""srv/Query.srv and msg/GroundedObject.msg are valid ROS 2 interfaces, checked by ROS's own tools.

rosidl_adapter parses .msg/.srv exactly as `rosidl_generate_interfaces` does and converts them to
.idl (the step before code generation); rosidl_parser then parses that IDL. Both come from the
ros-jazzy-rosidl-adapter / ros-jazzy-rosidl-parser wheels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rosidl_adapter.msg import convert_msg_to_idl
from rosidl_adapter.parser import InvalidFieldDefinition, parse_message_file, parse_message_string, parse_service_file
from rosidl_adapter.srv import convert_srv_to_idl
from rosidl_parser.definition import (
    BasicType,
    IdlLocator,
    Message,
    NamespacedType,
    Service,
    UnboundedSequence,
    UnboundedString,
)
from rosidl_parser.parser import parse_idl_file

ROOT = Path(__file__).resolve().parents[1]
VISION_MSGS = ROOT / "test" / "fixtures" / "ros_interfaces" / "vision_msgs"


def _fields(spec) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f.name: str(f.type) for f in spec.fields}


def test_grounded_object_msg_parses_with_rosidl_adapter() -> None:
    spec = parse_message_file("video3dllm", str(ROOT / "msg" / "GroundedObject.msg"))
    assert spec.base_type.pkg_name == "video3dllm" and spec.msg_name == "GroundedObject"
    assert _fields(spec) == {"bbox": "vision_msgs/BoundingBox3D", "label": "string", "score": "float32"}


def test_query_srv_parses_with_rosidl_adapter() -> None:
    spec = parse_service_file("video3dllm", str(ROOT / "srv" / "Query.srv"))
    assert _fields(spec.request) == {
        "question": "string",
        "task": "string",
        "situation": "string",
        "use_target": "bool",
        "target": "geometry_msgs/Point",
        "max_frames": "uint32",
    }
    assert _fields(spec.response) == {
        "success": "bool",
        "message": "string",
        "answer": "string",
        "header": "std_msgs/Header",
        "objects": "video3dllm/GroundedObject[]",
        "keyframe_count": "uint32",
        "keyframe_stamps": "builtin_interfaces/Time[]",
        "coverage": "float32",
        "proposal_stamps": "builtin_interfaces/Time[]",
        "decoding": "string",
        "latency_s": "float32",
    }


def test_adapter_rejects_a_broken_definition() -> None:
    """The parser used above does reject bad input (so the tests above can fail)."""
    with pytest.raises(InvalidFieldDefinition):
        parse_message_string("video3dllm", "Broken", "vision_msgs/BoundingBox3D\n")


def test_vision_msgs_stand_in_matches_jazzy_field_layout() -> None:
    """The test-only vision_msgs subset has vision_msgs 4.x field names and types."""
    expected = {
        "ObjectHypothesis": {"class_id": "string", "score": "float64"},
        "ObjectHypothesisWithPose": {"hypothesis": "vision_msgs/ObjectHypothesis", "pose": "geometry_msgs/PoseWithCovariance"},
        "BoundingBox3D": {"center": "geometry_msgs/Pose", "size": "geometry_msgs/Vector3"},
        "Detection3D": {"header": "std_msgs/Header", "results": "vision_msgs/ObjectHypothesisWithPose[]",
                        "bbox": "vision_msgs/BoundingBox3D", "id": "string"},
        "Detection3DArray": {"header": "std_msgs/Header", "detections": "vision_msgs/Detection3D[]"},
    }
    for name, fields in expected.items():
        assert _fields(parse_message_file("vision_msgs", str(VISION_MSGS / "msg" / f"{name}.msg"))) == fields, name


def test_msg_and_srv_convert_to_idl_that_rosidl_parser_reads(tmp_path: Path) -> None:
    out = tmp_path / "idl"
    out.mkdir()
    msg_idl = convert_msg_to_idl(ROOT, "video3dllm", Path("msg/GroundedObject.msg"), out)
    srv_idl = convert_srv_to_idl(ROOT, "video3dllm", Path("srv/Query.srv"), out)

    msg_file = parse_idl_file(IdlLocator(out, msg_idl.name))
    messages = msg_file.content.get_elements_of_type(Message)
    assert len(messages) == 1
    members = {m.name: m.type for m in messages[0].structure.members}
    assert messages[0].structure.namespaced_type.namespaced_name() == ("video3dllm", "msg", "GroundedObject")
    assert isinstance(members["bbox"], NamespacedType)
    assert members["bbox"].namespaced_name() == ("vision_msgs", "msg", "BoundingBox3D")
    assert isinstance(members["label"], UnboundedString)
    assert isinstance(members["score"], BasicType) and members["score"].typename == "float"

    srv_file = parse_idl_file(IdlLocator(out, srv_idl.name))
    services = srv_file.content.get_elements_of_type(Service)
    assert len(services) == 1
    request = {m.name: m.type for m in services[0].request_message.structure.members}
    response = {m.name: m.type for m in services[0].response_message.structure.members}
    assert list(request) == ["question", "task", "situation", "use_target", "target", "max_frames"]
    assert isinstance(request["max_frames"], BasicType) and request["max_frames"].typename == "uint32"
    assert request["target"].namespaced_name() == ("geometry_msgs", "msg", "Point")
    objects = response["objects"]
    assert isinstance(objects, UnboundedSequence)
    assert objects.value_type.namespaced_name() == ("video3dllm", "msg", "GroundedObject")
    for name in ("keyframe_stamps", "proposal_stamps"):
        stamps = response[name]
        assert isinstance(stamps, UnboundedSequence), name
        assert stamps.value_type.namespaced_name() == ("builtin_interfaces", "msg", "Time"), name
    assert response["latency_s"].typename == "float"
    # The comments of the .srv travel into the IDL as verbatim annotations (ros2 interface show).
    assert "keyframe budget" in srv_idl.read_text().lower()
