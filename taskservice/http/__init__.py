"""The HTTP edge: the same API over Connect and gRPC-Web, for browsers, curl and Connect clients.

Connect (JSON and binary, GET for read-only methods) and gRPC-Web are served on HTTP/1.1 and
HTTP/2 (h2c included). The edge is as thin as the gRPC one: the generated Connect applications
call the gRPC servicers' own methods (protobuf in, one service call, protobuf out), and what
every call needs comes from `taskservice.calls`, so no rule is written twice.
"""
