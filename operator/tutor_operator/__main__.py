"""Run the operator: ``python -m tutor_operator [--server URL] [--namespace NS] [--verbose]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib

import kopf
from tutor_contract.version import version_line

from .handlers import register
from .kube import KubeApi
from .reconcile import Context
from .settings import OperatorSettings


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
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else None
    overrides = {"api_server": args.server, "namespace": args.namespace, "api_token": token}
    settings = OperatorSettings(**{k: v for k, v in overrides.items() if v is not None})
    kopf.configure(verbose=args.verbose, debug=args.debug)
    for quiet in ("httpx2", "httpcore2"):  # one line per request even when verbose: too much
        logging.getLogger(quiet).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, Context(KubeApi.from_settings(settings), settings))
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
