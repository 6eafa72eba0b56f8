"""What every call needs whatever its transport: written once, adapted by each edge.

The gRPC edge (`taskservice.api`) and the HTTP edge (`taskservice.http`) both resolve the caller's
bearer token to a Principal, give the call a request id, map errors to one status with the same
details, and end with one access-log line and the same metrics; the code for each lives here.
Nothing in this package imports grpc or an HTTP library.
"""
