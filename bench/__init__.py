"""`make bench`: taskservice under load from h2load, reported against a bare grpc.aio echo server.

Absolute calls/s depend on the machine; the ratio to an echo server measured by the same load
generator in the same run does much less, so that ratio is what targets and comparisons use.
See docs/benchmarks.md for the scenarios, the latest figures and how to read them.
"""
