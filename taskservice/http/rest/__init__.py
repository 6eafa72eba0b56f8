"""The original REST API (`/api/v1/...`, `/health`), served unchanged beside Connect and gRPC-Web.

A compatibility surface for the clients of the FastAPI application this service replaced: its
paths, JSON shapes, status codes and FastAPI-style error bodies, mapped onto the same services
the other edges call. It is a thin adapter (`routes`): JSON in, one service call, JSON out.
What every call needs (request id, access log, metrics, concurrency limit, outage gate,
authentication, error mapping) comes from `taskservice.calls` through `calls`; the bodies and
their JSON Schemas are in `bodies`; `openapi` documents the surface at `/openapi.json` and
serves Swagger UI at `/docs` from a packaged copy, never a CDN.
"""
