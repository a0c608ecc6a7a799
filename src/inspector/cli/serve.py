"""`inspector serve`: run the line-side inspection service.

The settings reference at the end of `inspector serve --help` is built from the pydantic settings model, so it is
formatted only when that help is printed (`CommandParser.lazy_epilog`): building the parser imports no pydantic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from inspector.cli.arguments import Subcommands, UsageError, add_command


def add_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "serve",
        run,
        "run the line-side inspection service (HTTP API, OpenAPI at /docs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.lazy_epilog = _settings_help
    p.add_argument("--config", type=Path, help="service config, YAML or TOML (default: $INSPECTOR_SERVICE_CONFIG)")
    p.add_argument(
        "--model-dir",
        action="append",
        metavar="[NAME=]DIR",
        help="fitted model to serve (repeat for several; NAME defaults to the folder name)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="serve every model folder below DIR as a recipe named after it, in sorted order (after --model-dir)",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--store-dir", type=Path, help="where inspections are recorded (default ./inspections)")
    p.add_argument("--workers", type=int, help="inference worker threads (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads per worker (default: cores / workers)")
    p.add_argument("--queue-size", type=int, help="requests that may wait for a worker before 503 (default 4)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (needs --tls-key)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    link = p.add_argument_group("line link (docs/plc.md)")
    link.add_argument(
        "--plc",
        action="append",
        metavar="URL",
        help="open a PLC server: modbus://HOST:PORT or opcua://HOST:PORT (repeat for both)",
    )
    link.add_argument("--opcua-nodeset", type=Path, help="OPC 40100 Machine Vision NodeSet2 file to instantiate")
    link.add_argument("--mqtt", metavar="URL", help="publish results: mqtt://[user@]host[:port]/prefix")
    link.add_argument("--webhook", action="append", metavar="URL", help="POST each result as JSON (repeatable)")


def _settings_help() -> str:
    """The service's config keys, environment variables and defaults (imports pydantic: call only to print)."""
    from inspector.service.config import settings_help

    return settings_help()


def run(args: argparse.Namespace) -> int:
    from inspector.service.app import serve
    from inspector.service.config import ModelSpec, load_settings
    from inspector.service.recipes import served_models

    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "queue_size": args.queue_size,
        "threads": args.threads,
        "store.dir": args.store_dir,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "models": [ModelSpec.parse(m) for m in args.model_dir] if args.model_dir else None,
        "models_dir": args.models_dir,
        "links.plc": args.plc,
        "links.opcua.nodeset": args.opcua_nodeset,
        "links.mqtt.url": args.mqtt,
        "links.webhook.urls": args.webhook,
    }
    settings = load_settings(args.config, overrides=overrides)  # ServiceConfigError is an InspectorError
    if not served_models(settings):
        raise UsageError("no model to serve: give --model-dir DIR or --models-dir DIR (or `models:` in the config)")
    serve(settings)
    return 0
