"""HTTP/2 and gRPC peers for the real-Envoy tests, over mutual TLS.

  h2_client.py streams HOST PORT CA CERT KEY SOURCE XFF...
      One TLS connection (ALPN h2, with the client certificate) from SOURCE;
      one GET per XFF value, all sent before any answer is read, so they are
      concurrent streams of that connection, each with its own
      X-Forwarded-For. Prints a JSON list, one item per stream, in order:
      {"status": 200, "body": <the echo upstream's JSON>}.
  h2_client.py grpc-server
      A gRPC server on 127.0.0.1 whose method /client_ip.Echo/Call answers
      with the request's metadata as JSON. Prints its port, then serves
      until stdin closes.
  h2_client.py grpc-call HOST PORT CA CERT KEY [NAME=VALUE...]
      Calls /client_ip.Echo/Call with that metadata and prints the answer.
"""

import json
import socket
import ssl
import sys


def streams(host, port, ca, cert, key, source, forwarded_fors):
    import h2.config
    import h2.connection
    import h2.events

    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    with context.wrap_socket(raw, server_hostname=host) as sock:
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        order = []
        for xff in forwarded_fors:
            stream_id = conn.get_next_available_stream_id()
            order.append(stream_id)
            conn.send_headers(stream_id, [
                (":method", "GET"), (":scheme", "https"), (":authority", "app"),
                (":path", f"/stream/{stream_id}"), ("x-forwarded-for", xff),
                ("x-real-ip", "6.6.6.6"),
            ], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, bodies, open_streams = {}, {i: b"" for i in order}, set(order)
        while open_streams:
            data = sock.recv(65536)
            if not data:
                raise SystemExit(f"connection closed with streams {sorted(open_streams)} open")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    open_streams.discard(event.stream_id)
            sock.sendall(conn.data_to_send())
    print(json.dumps([
        {"status": status.get(i), "body": json.loads(bodies[i] or b"null")} for i in order
    ]))


def grpc_server():
    from concurrent import futures

    import grpc

    def call(_request, context):
        return json.dumps({k: v for k, v in context.invocation_metadata()}).encode()

    handler = grpc.method_handlers_generic_handler(
        "client_ip.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)


def grpc_call(host, port, ca, cert, key, *metadata):
    import grpc

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    with grpc.secure_channel(f"{host}:{port}", credentials) as channel:
        call = channel.unary_unary("/client_ip.Echo/Call")
        pairs = [tuple(item.split("=", 1)) for item in metadata]
        print(call(b"", metadata=pairs, timeout=10).decode())


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "streams":
        streams(*args[:6], args[6:])
    elif command == "grpc-server":
        grpc_server()
    elif command == "grpc-call":
        grpc_call(*args)
    else:
        raise SystemExit(f"unknown command {command!r}")
