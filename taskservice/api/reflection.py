"""Server reflection that carries the contract's comments, under both reflection API versions.

The proto comments are the API documentation, and reflection is how grpcurl, `buf curl` and GUI
clients read them: they show a comment only when the FileDescriptorProtos reflection returns
carry SourceCodeInfo. The generated `*_pb2` modules do not keep it, and grpcio-reflection's
servicer re-serializes every file from a DescriptorPool, which (upb) drops it even when the pool
was built with it. So this servicer sends the files of the descriptor set `make proto` writes
(taskservice/v1/descriptor_set.binpb, with source info and every import) as they are, and uses a
pool only to find which file declares a symbol. Services outside the contract (health, reflection)
are described from their generated modules, without comments.

Error details are `google.protobuf.Any`s (`google.rpc.ErrorInfo`, `BadRequest`, `RetryInfo`), and
grpcurl decodes one only if reflection answers `file_containing_symbol` for its type URL's message.
No contract file imports google/rpc/error_details.proto, so the descriptor set lacks it (a
servicer reading the default pool found it only because the server imports its module):
`DETAIL_FILES` adds it, google/rpc/status.proto and their imports from their generated modules.

grpcio-reflection serves only `grpc.reflection.v1alpha`. `grpc.reflection.v1` is the same
protocol under a new package, with the very same messages, fields and numbers, so one servicer
answers both; clients (grpcurl, `buf curl`) ask v1 first and fall back to v1alpha.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

#: The descriptor set `make proto` writes next to the generated code.
DESCRIPTOR_SET = "descriptor_set.binpb"

V1ALPHA_SERVICE_NAME: str = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
#: Both reflection services, listed and described like every other service.
SERVICE_NAMES: tuple[str, ...] = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)

_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package
_V1_PACKAGE = V1_SERVICE_NAME.rsplit(".", 1)[0]
_METHOD = "ServerReflectionInfo"

#: Files served besides the contract's: the types of every error detail the server sends
#: (google/rpc/error_details.proto) and of the status carrying them, so clients can decode both.
DETAIL_FILES: tuple[FileDescriptor, ...] = (error_details_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR)

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


def contract_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The descriptor set's files (protos/ and their imports, with comments), imports first."""
    data = resources.files("taskservice.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection, v1 and v1alpha, listing `service_names` and the reflection services.

    Raises RuntimeError when a service cannot be described as it is served (a stale descriptor
    set: run `make proto`), so the mismatch stops the start rather than misleading clients.
    """
    servicer = ReflectionServicer((*service_names, *SERVICE_NAMES), contract_files())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=Request.FromString,
            response_serializer=Response.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """Answers reflection requests from a fixed set of files, sent exactly as given."""

    def __init__(
        self,
        service_names: Iterable[str],
        files: Iterable[descriptor_pb2.FileDescriptorProto],
    ) -> None:
        self._service_names = tuple(sorted(set(service_names)))
        self._pool = descriptor_pool.DescriptorPool()
        self._files: dict[str, bytes] = {}
        self._dependencies: dict[str, tuple[str, ...]] = {}
        for file in (*files, _v1_reflection_file()):
            self._add(file)
        for detail_file in DETAIL_FILES:
            self._add_generated(detail_file)
        for name in self._service_names:
            self._describe_service(name)

    async def ServerReflectionInfo(  # noqa: N802 (the RPC's name)
        self, request_iterator: AsyncIterator[Request], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        """Answer each request on the stream in turn."""
        async for request in request_iterator:
            yield self._answer(request)

    def _answer(self, request: Request) -> Response:
        kind = request.WhichOneof("message_request")
        try:
            if kind == "file_by_filename":
                return self._files_response(request, request.file_by_filename)
            if kind == "file_containing_symbol":
                return self._files_response(
                    request, self._file_declaring(request.file_containing_symbol)
                )
            if kind == "file_containing_extension":
                wanted = request.file_containing_extension
                extension = self._pool.FindExtensionByNumber(
                    self._pool.FindMessageTypeByName(wanted.containing_type),
                    wanted.extension_number,
                )
                return self._files_response(request, extension.file.name)
            if kind == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                return Response(
                    original_request=request,
                    all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                        base_type_name=message.full_name,
                        extension_number=sorted(
                            e.number for e in self._pool.FindAllExtensions(message)
                        ),
                    ),
                )
            if kind == "list_services":
                return Response(
                    original_request=request,
                    list_services_response=reflection_pb2.ListServiceResponse(
                        service=[
                            reflection_pb2.ServiceResponse(name=n) for n in self._service_names
                        ]
                    ),
                )
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND, "not found")
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request set")

    def _file_declaring(self, symbol: str) -> str:
        """The file declaring a message, enum, field, service, or method (`pkg.Service.Method`).

        The pool does not look up methods by name, which `grpcurl describe pkg.Service.Method`
        asks for, so a method is found through its service.
        """
        try:
            return self._pool.FindFileContainingSymbol(symbol).name
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)
            if method not in service.methods_by_name:
                raise
            return service.file.name

    def _files_response(self, request: Request, name: str) -> Response:
        """The file `name` first, then everything it imports, transitively."""
        order: list[str] = []
        pending = [name]
        while pending:
            current = pending.pop()
            if current not in order:
                order.append(current)
                pending.extend(reversed(self._dependencies[current]))
        return Response(
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._files[n] for n in order]
            ),
        )

    def _add(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        serialized = file.SerializeToString()
        self._pool.AddSerializedFile(serialized)  # TypeError when an import is missing
        self._files[file.name] = serialized
        self._dependencies[file.name] = tuple(file.dependency)

    def _add_generated(self, file: FileDescriptor) -> None:
        """Add a file from the generated code (and what it imports), unless already there."""
        if file.name in self._files:
            return
        for dependency in file.dependencies:
            self._add_generated(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        self._add(proto)

    def _describe_service(self, name: str) -> None:
        """Make sure `name` is described, and described as the server really serves it."""
        try:
            served = descriptor_pool.Default().FindServiceByName(name)
        except KeyError:
            served = None
        try:
            described = self._pool.FindServiceByName(name)
        except KeyError:
            if served is None:
                raise RuntimeError(f"reflection: no descriptor for service {name}") from None
            self._add_generated(served.file)
            described = self._pool.FindServiceByName(name)
        if served is not None and _signature(described) != _signature(served):
            raise RuntimeError(
                f"reflection: {DESCRIPTOR_SET} describes {name} unlike the generated code; "
                "run `make proto`"
            )


def _signature(service: ServiceDescriptor) -> set[tuple[str, str, str, bool, bool]]:
    """What a client relies on: each method's name, types and streaming."""
    return {
        (
            m.name,
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file with the package renamed.

    The two versions' messages are identical field for field, which is what lets one servicer
    answer both; this is the file grpc-proto publishes for v1, less its comments.
    """
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = _V1_PACKAGE
    file.options.Clear()
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    file.options.java_multiple_files = True
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.java_outer_classname = "ServerReflectionProto"
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # scalars have none, and "" would set one
                field.type_name = field.type_name.replace(old, new, 1)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    return file


def _error(request: Request, code: grpc.StatusCode, message: str) -> Response:
    return Response(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=code.value[0], error_message=message
        ),
    )
