"""
The wire: generated gRPC code, the one bridge between grpc.aio and Twisted, authentication and TLS.
"""
