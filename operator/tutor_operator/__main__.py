"""Run the operator: ``python -m tutor_operator [--server URL] [--namespace NS] [--verbose]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib

import kopf
from pydantic import ValidationError
from pydantic_settings import SettingsError
from tutor_contract import logs, tracing
from tutor_contract.version import version_line

from .handlers import register
from .kube import KubeApi
from .metrics import OperatorMetrics
from .reconcile import Context
from .settings import OperatorSettings, unknown_variables


def main(argv: list[str] | None = None) -> None:
    """Reconcile TutorSessions and TutorEngines until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="tutor-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line(parser.prog))
    parser.add_argument("--server", help="API server URL, no TLS checks (tests, emulators)")
    parser.add_argument(
        "--token-file", help="bearer token for --server (else env TUTOR_OPERATOR_API_TOKEN)"
    )
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.add_argument(
        "--liveness", help="serve kopf's health probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--log-format", choices=logs.LOG_FORMATS, help="else env TUTOR_OPERATOR_LOG_FORMAT"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port, 0: none (else env "
        "TUTOR_OPERATOR_METRICS_PORT, default 8081)",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else None
    overrides = {"api_server": args.server, "namespace": args.namespace, "api_token": token}
    overrides["log_format"] = args.log_format
    overrides["metrics_port"] = args.metrics_port
    try:
        settings = OperatorSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # e.g. an unknown key of TUTOR_OPERATOR_ENGINE_DEFAULTS
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.exit(2, f"{parser.prog}: invalid settings: {wrong}\n")
    except SettingsError as exc:  # a JSON value that does not parse
        parser.exit(2, f"{parser.prog}: invalid settings: {exc}\n")
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=log_format)
    logs.adopt_handlers("operator", settings.log_format)  # redaction; component and logger
    for quiet in ("httpx2", "httpcore2"):  # one line per request even when verbose: too much
        logging.getLogger(quiet).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    if unknown := unknown_variables(os.environ):
        logging.getLogger("tutor_operator").warning(
            "ignoring %s: not operator settings (engine defaults go in "
            "TUTOR_OPERATOR_ENGINE_DEFAULTS, operator/README.md)",
            ", ".join(unknown),
        )
    tracing.configure("tutor-operator")  # on only with OTEL_EXPORTER_OTLP_ENDPOINT
    metrics = OperatorMetrics()
    metrics.serve(settings.metrics_port)
    registry = kopf.OperatorRegistry()
    api = KubeApi.from_settings(settings, metrics)
    register(registry, Context(api, settings, metrics=metrics))
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=settings.standalone,
            clusterwide=not settings.namespace,
            namespaces=[settings.namespace] if settings.namespace else [],
            liveness_endpoint=args.liveness,
        )
    )


if __name__ == "__main__":
    main()
