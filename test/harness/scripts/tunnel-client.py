"""A client that keeps one CONNECT tunnel open and sends requests through it on demand.

Reads commands from stdin, one per line: `GET <host[:port]> <path> [<authorization>]`; prints one JSON line
per response: {"status": N, "reason": "<x-deny-reason>", "body": "..."} or {"error": "..."}.
Used to show that a revoked session is cut inside an already-open tunnel.
"""
import base64, json, socket, ssl, sys

proxy_host, proxy_port, authority, token, cafile, sni = sys.argv[1:7]
s = socket.create_connection((proxy_host, int(proxy_port)), timeout=10)
auth = base64.b64encode(f"session:{token}".encode()).decode()
s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print(json.dumps({"connect": head.split(b"\r\n")[0].decode()}), flush=True)
ctx = ssl.create_default_context(cafile=cafile)
tls = ctx.wrap_socket(s, server_hostname=sni)


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = sock.recv(65536)
        if not c:
            raise EOFError("connection closed")
        buf += c
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        c = sock.recv(65536)
        if not c:
            break
        rest += c
    return status, headers, rest[:n].decode("utf8", "replace")


for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    host, path = parts[1], parts[2]
    extra = f"Authorization: {' '.join(parts[3:])}\r\n" if len(parts) > 3 else ""
    try:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        status, headers, body = read_response(tls)
        print(json.dumps({"status": status, "reason": headers.get("x-deny-reason"), "body": body}), flush=True)
    except Exception as e:  # the tunnel was cut
        print(json.dumps({"error": str(e)}), flush=True)
