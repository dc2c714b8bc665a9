"""`tlsecho`, the SF the hop-by-hop TLS tests deploy (SFR-19): its manifest opts in with
`tls: true`, and it answers with its SFE name and whether it was handed a certificate."""

from __future__ import annotations

from pathlib import Path

MANIFEST = """\
name: tlsecho
version: "1.0"
entrypoint: [python3, server.py]
tls: true
ports: [{name: http, port: 8080}]
health: {path: /health, port: http, interval: 1 s}
"""

SERVER = """\
import os, sys
from flame.media.serving import serve_app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"ok" if scope["path"] == "/health" else (
        f"tlsecho {os.environ['FLAME_SFE']} tls={'FLAME_TLS_CERT' in os.environ}".encode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sys.exit(serve_app(app, os.environ["FLAME_HOST"], int(os.environ["FLAME_PORT"])))
"""

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_3
metadata:
  template_name: tlsecho
  servicefunctionchain: tlsecho
  sfc_instance: tlsecho-1
topology_template:
  node_templates:
    web:
      type: eu.ict-flame.nodes.ServiceFunction
      properties:
        image: tlsecho:1.0
        fqdn: web.tls.example
        ports:
          - {name: http, port: 8080}
        health_check: {path: /health, port: http, interval: 1 s}
      capabilities:
        host:
          properties: {num_cpus: 1, mem_size: 128 MB, disk_size: 100 MB}
  policies:
    - initial:
        type: eu.ict-flame.policies.InitialPolicy
        targets: [web]
        properties:
          clusters:
            CLUSTER: {web: connected}
"""


def template(cluster: str) -> str:
    """The tlsecho service with its one endpoint placed on `cluster`."""
    return TEMPLATE.replace("CLUSTER", cluster)


def write_sf(directory: Path) -> Path:
    """The SF's source tree (manifest and server) in `directory`, created."""
    directory.mkdir(parents=True)
    (directory / "flame-sf.yaml").write_text(MANIFEST)
    (directory / "server.py").write_text(SERVER)
    return directory
