"""Generated gRPC stubs for proto/snakepit_bridge.proto.

Do not edit the ``snakepit_bridge_pb2*`` files: regenerate them with
``python priv/python/generate_proto.py`` (see that script).
"""
