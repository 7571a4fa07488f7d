"""Every RPC that returns a google.longrunning.Operation says what the operation resolves to
(AIP-151 ``operation_info``), and the names it gives are messages of the same package: Google
client libraries and generators read them to type the operation's response and metadata."""

from __future__ import annotations

import pytest
from google.longrunning import operations_proto_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from rpi.inspection.v1 import inspection_pb2, operations_pb2

OPERATION = operations_proto_pb2.Operation.DESCRIPTOR.full_name
LRO_METHODS = [
    method
    for file in (inspection_pb2.DESCRIPTOR, operations_pb2.DESCRIPTOR)
    for service in file.services_by_name.values()
    for method in service.methods
    if method.output_type.full_name == OPERATION
]


def _resolve(method: MethodDescriptor, name: str) -> str:
    # AIP-151: a name without a dot is relative to the method's package.
    package = method.containing_service.file.package
    full = name if "." in name else f"{package}.{name}"
    descriptor_pool.Default().FindMessageTypeByName(full)
    return full


def test_the_asynchronous_api_has_long_running_methods() -> None:
    assert [m.full_name for m in LRO_METHODS] == [
        "rpi.inspection.v1.AsyncInspectionService.SubmitInspection"
    ]


@pytest.mark.parametrize("method", LRO_METHODS, ids=lambda m: m.full_name)
def test_each_long_running_method_names_its_response_and_metadata(
    method: MethodDescriptor,
) -> None:
    options = method.GetOptions()
    assert options.HasExtension(operations_proto_pb2.operation_info)
    info = options.Extensions[operations_proto_pb2.operation_info]
    assert _resolve(method, info.response_type) == inspection_pb2.Inspection.DESCRIPTOR.full_name
    assert (
        _resolve(method, info.metadata_type)
        == operations_pb2.InspectionOperationMetadata.DESCRIPTOR.full_name
    )
