"""Distributed tracing with OpenTelemetry: the tracer provider a server owns, and its spans.

`provider` builds a server's provider from the standard `OTEL_*` variables (or none at all when
nothing is to be exported); `spans` is what the layers below the edges use to add child spans
to the call in progress, without knowing which provider, if any, the call is traced by.
"""
