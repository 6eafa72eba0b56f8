"""taskservice: task management over gRPC."""
