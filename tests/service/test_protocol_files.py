"""The committed protocol code is current, and the protocols match their specifications'
published descriptors (tritonclient's copy of Triton's, grpcio-health-checking's)."""

from __future__ import annotations

import grpc_health.v1.health_pb2 as standard_health
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service

from foveal.proto import generate
from foveal.proto.grpc.health.v1 import health_pb2
from foveal.proto.inference import grpc_service_pb2, model_config_pb2


def test_generated_modules_are_current():
    assert generate.stale_files() == [], "run `make proto` and commit the result"


def _field_signature(field) -> tuple:
    target = field.message_type or field.enum_type
    return (field.number, field.type, field.is_repeated if hasattr(field, "is_repeated")
            else field.label == 3, target.full_name if target else None)


def _assert_messages_match(ours, theirs, where: str) -> int:
    """Every field we define exists in the reference with the same number, type, label and
    message type; recurses into nested messages. Returns the number of fields compared."""
    compared = 0
    for name, field in ours.fields_by_name.items():
        assert name in theirs.fields_by_name, f"{where}.{name} is not in the reference"
        assert _field_signature(field) == _field_signature(theirs.fields_by_name[name]), \
            f"{where}.{name} differs from the reference"
        compared += 1
    for nested in ours.nested_types:
        compared += _assert_messages_match(nested, theirs.nested_types_by_name[nested.name],
                                           f"{where}.{nested.name}")
    for enum in ours.enum_types:
        reference = {v.name: v.number for v in theirs.enum_types_by_name[enum.name].values}
        assert {v.name: v.number for v in enum.values}.items() <= reference.items()
    return compared


def _assert_file_matches(ours, theirs) -> int:
    assert ours.package == theirs.package
    compared = 0
    for name, message in ours.message_types_by_name.items():
        compared += _assert_messages_match(message, theirs.message_types_by_name[name], name)
    for name, enum in ours.enum_types_by_name.items():
        reference = {v.name: v.number for v in theirs.enum_types_by_name[name].values}
        assert {v.name: v.number for v in enum.values} == reference
    for name, service in ours.services_by_name.items():
        reference = theirs.services_by_name[name]
        for method in service.methods:
            other = reference.methods_by_name[method.name]
            assert (method.input_type.full_name, method.output_type.full_name,
                    method.client_streaming, method.server_streaming) == (
                other.input_type.full_name, other.output_type.full_name,
                other.client_streaming, other.server_streaming), method.name
    return compared


def test_inference_protocol_matches_tritons_field_numbers():
    compared = _assert_file_matches(grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR)
    compared += _assert_file_matches(model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR)
    assert compared > 80  # the whole subset was compared, not an empty walk
    ours = {m.name for m in grpc_service_pb2.DESCRIPTOR.services_by_name[
        "GRPCInferenceService"].methods}
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelConfig", "ModelStatistics", "RepositoryIndex", "ModelInfer",
            "ModelStreamInfer"} <= ours


def test_health_protocol_matches_the_standard():
    assert _assert_file_matches(health_pb2.DESCRIPTOR, standard_health.DESCRIPTOR) == 2


def test_both_copies_of_the_protocol_live_in_one_process():
    """Our descriptors are in a private pool: tritonclient's copy imports beside them, and the
    wire format is shared."""
    ours = grpc_service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01"])
    ours.inputs.add(name="images", datatype="UINT8", shape=[1, 1, 1, 1])
    theirs = triton_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].shape == [1, 1, 1, 1] and theirs.raw_input_contents == [b"\x01"]


def test_generated_modules_import_under_foveal_proto_without_a_version_check():
    source = generate.PROTO_ROOT / "inference" / "grpc_service_pb2.py"
    text = source.read_text()
    assert "from foveal.proto.inference import model_config_pb2" in text
    assert "ValidateProtobufRuntimeVersion" not in text
    assert "_foveal_pool.AddSerializedFile(" in text
