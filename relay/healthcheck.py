"""``python -m accord.relay.healthcheck [URL]``: exit 0 if the relay's ``/healthz`` answers 200.

For container and service health checks (the Dockerfile's HEALTHCHECK runs it): standard
library only, one request, a deadline, no retries (the orchestrator retries). Exit 0 healthy;
1 unhealthy (not 200: the store does not answer, or the relay is unreachable), with the reason
on stderr; 2 bad usage. An https URL is verified against the system CAs or ``--ca-file``;
``--no-verify`` skips that, for a loopback URL whose certificate names the public host.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from accord.engine.errors import ExitCode

DEFAULT_URL = "http://127.0.0.1:8765/healthz"
MAX_BODY = 4096


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m accord.relay.healthcheck",
        description="Ask a relay's /healthz; exit 0 if it answers 200, 1 otherwise (for HEALTHCHECK, probes).",
        epilog=f"examples:\n  python -m accord.relay.healthcheck {DEFAULT_URL}\n"
               "  python -m accord.relay.healthcheck https://127.0.0.1:8765/healthz --no-verify",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"the relay's /healthz (default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="deadline (default 5)")
    parser.add_argument("--token", default=os.environ.get("ACCORD_HEALTH_TOKEN") or None,
                        help="bearer token, if /healthz needs one (env ACCORD_HEALTH_TOKEN)")
    parser.add_argument("--ca-file", default=None, metavar="FILE", help="CA certificates to verify an https relay with")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not verify the certificate (only for a loopback URL, e.g. inside the container)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the health check with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    if urllib.parse.urlsplit(args.url).scheme not in ("http", "https"):
        print(f"healthcheck: {args.url!r} is not an http(s) URL; write it like {DEFAULT_URL}", file=sys.stderr)
        return ExitCode.USAGE
    context = ssl.create_default_context(cafile=args.ca_file)
    if args.no_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    request = urllib.request.Request(args.url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as response:
            status, body = response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_BODY)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"healthcheck: unhealthy: cannot reach {args.url}: {reason}", file=sys.stderr)
        return ExitCode.ERROR
    text = body.decode(errors="replace").strip()
    if status != 200:
        print(f"healthcheck: unhealthy: {args.url} answered {status}: {text}", file=sys.stderr)
        return ExitCode.ERROR
    print(text)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
