"""The gRPC edge: servicers that adapt protobuf to services, and the interceptors around them."""
