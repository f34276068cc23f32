"""gRPC client stubs and server registration, built from the service descriptors.

grpcio-tools' generated `_pb2_grpc` modules call grpcio APIs as new as the tools that made
them; building the same callables from the descriptors works on every grpcio foveal supports,
for sync and asyncio channels and servers alike:

    stub = FeatureServiceStub(grpc.insecure_channel("127.0.0.1:8001"))
    stub.ListModels(foveal_pb2.ListModelsRequest())
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from foveal.proto.foveal.v1 import foveal_pb2
from foveal.proto.grpc.health.v1 import health_pb2
from foveal.proto.inference import grpc_service_pb2

FEATURE_SERVICE = foveal_pb2.DESCRIPTOR.services_by_name["FeatureService"]
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


def _kind(method: MethodDescriptor) -> str:
    """grpc's name for the method's shape: unary_unary, unary_stream, stream_unary, ..."""
    request = "stream" if method.client_streaming else "unary"
    response = "stream" if method.server_streaming else "unary"
    return f"{request}_{response}"


def _classes(method: MethodDescriptor) -> tuple[Any, Any]:
    return (message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type))


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The HTTP/2 path of a method, e.g. /foveal.v1.FeatureService/ListModels."""
    return f"/{service.full_name}/{method}"


class Stub:
    """One callable attribute per method of `service`, bound to `channel` (sync or aio)."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel, service: ServiceDescriptor):
        for method in service.methods:
            request_class, response_class = _classes(method)
            factory = getattr(channel, _kind(method))
            setattr(self, method.name, factory(method_path(service, method.name),
                                               request_serializer=request_class.SerializeToString,
                                               response_deserializer=response_class.FromString))


class FeatureServiceStub(Stub):
    def __init__(self, channel: grpc.Channel | grpc.aio.Channel):
        super().__init__(channel, FEATURE_SERVICE)


class InferenceServiceStub(Stub):
    def __init__(self, channel: grpc.Channel | grpc.aio.Channel):
        super().__init__(channel, INFERENCE_SERVICE)


class HealthStub(Stub):
    def __init__(self, channel: grpc.Channel | grpc.aio.Channel):
        super().__init__(channel, HEALTH_SERVICE)


def service_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """A handler routing each method of `service` to the servicer's method of the same name.

    Methods the servicer lacks are left out, so calls to them answer UNIMPLEMENTED.
    """
    handlers = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        request_class, response_class = _classes(method)
        factory = getattr(grpc, f"{_kind(method)}_rpc_method_handler")
        handlers[method.name] = factory(behaviour, request_deserializer=request_class.FromString,
                                        response_serializer=response_class.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def add_servicer(server: grpc.Server | grpc.aio.Server, service: ServiceDescriptor,
                 servicer: object) -> None:
    server.add_generic_rpc_handlers((service_handler(service, servicer),))
