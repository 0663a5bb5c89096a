"""TLS on the relay's one port: terminals, peers, stock Yjs clients, plain HTTPS and the board in
Chromium over wss:// and https://, with a throwaway CA made here (``trustme``); plaintext
clients to a TLS port fail cleanly; a plaintext listener off loopback is refused without
``--insecure-plaintext``; a reload (``Relay.reload()``, SIGHUP) swaps the certificate for new
handshakes while open connections keep streaming.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from relays import Relay, RelayConfig, RelayProcess, free_port, relay_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage
from wire import WireClient

from accord.engine.errors import AccordError
from accord.relay import cli as relay_cli
from accord.terminal import cli as terminal_cli
from accord.terminal.client import Terminal
from accord.terminal.link import Backoff, LinkState

CAL = "clinic-1"
FAST = Backoff(initial_s=0.05, max_s=0.2)
YCLIENT = Path(__file__).resolve().parent.parent / "interop" / "yclient.mjs"


@dataclass(frozen=True)
class Pki:
    """A CA and the relay certificate it issued for 127.0.0.1, as files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    cert_der: bytes

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_pki(folder: Path, name: str) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=f"accord test CA {name}")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = folder / f"{name}-ca.pem", folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return Pki(ca, ca_file, cert_file, key_file, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", "one")


def tls_config(tmp_path: Path, relay_id: str, pki: Pki, **kw: Any) -> RelayConfig:
    return relay_config(tmp_path, relay_id, tls_cert_path=pki.cert_file, tls_key_path=pki.key_file, **kw)


async def presented_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The DER certificate a fresh TLS handshake with 127.0.0.1:``port`` gets (raises if it fails verification)."""
    async with asyncio.timeout(5):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der
    finally:
        writer.close()


def https_get(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---- terminals -----------------------------------------------------------------------------------


async def test_terminal_syncs_with_a_tls_relay_given_its_ca_file(tmp_path: Path, pki: Pki) -> None:
    async with Relay(tls_config(tmp_path, "a", pki)) as relay:
        assert relay.url == f"wss://127.0.0.1:{relay.port}"
        assert relay.board_url == f"https://127.0.0.1:{relay.port}/"
        async with Terminal(relay.url, tmp_path / "t.sqlite", name="desk-1", ca_file=pki.ca_file, backoff=FAST) as t:
            await t.open(CAL)
            booked = await t.book(CAL, resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                                  patient="P-0042")
            await t.synced(timeout=10)
            assert t.status().link is LinkState.ONLINE
        assert (await relay.calendar(CAL)).get(booked.id).patient == "P-0042"


@pytest.fixture
def quiet_cli_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACCORD_STORE", "ACCORD_RELAY", "ACCORD_TOKEN", "ACCORD_CALENDAR", "ACCORD_AS", "ACCORD_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("accord.logs.configure", lambda *_args, **_kw: None)  # keep pytest's log handlers


async def test_terminal_cli_names_the_certificate_problem_and_trusts_its_ca_file(
        tmp_path: Path, pki: Pki, quiet_cli_logs: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with Relay(tls_config(tmp_path, "a", pki)) as relay:
        def sync(*extra: str) -> int:
            return terminal_cli.main(["sync", "--store", str(tmp_path / "t.sqlite"), "--relay", relay.url,
                                      "--calendar", CAL, "--timeout", "3", *extra])

        # The system's CA store does not know the test CA: exit 3, the message names the problem and the fix.
        assert await asyncio.to_thread(sync) == 3
        err = capsys.readouterr().err
        assert "TLS certificate rejected: unable to get local issuer certificate" in err, err
        assert "--ca-file" in err and "Traceback" not in err and err.count("\n") == 1

        assert await asyncio.to_thread(sync, "--ca-file", str(pki.ca_file)) == 0
        capsys.readouterr()
        monkeypatch.setenv("ACCORD_CA_FILE", str(pki.ca_file))
        assert await asyncio.to_thread(sync) == 0
        capsys.readouterr()

        # Another CA's file: rejected the same way; a missing file: an error naming it (exit 1).
        other = make_pki(tmp_path / "other", "other")
        assert await asyncio.to_thread(sync, "--ca-file", str(other.ca_file)) == 3
        assert "TLS certificate rejected" in capsys.readouterr().err
        assert await asyncio.to_thread(sync, "--ca-file", str(tmp_path / "missing.pem")) == 1
        err = capsys.readouterr().err
        assert "missing.pem does not exist" in err and "Traceback" not in err

        # A plaintext ws:// URL for the TLS relay: unreachable, with the hint to use wss://.
        plain = relay.url.replace("wss://", "ws://")
        code = await asyncio.to_thread(terminal_cli.main, ["sync", "--store", str(tmp_path / "t.sqlite"),
                                                           "--relay", plain, "--calendar", CAL, "--timeout", "3"])
        assert code == 3
        assert "wss://" in capsys.readouterr().err


async def test_host_name_mismatch_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("relay.clinic.example")  # not 127.0.0.1
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    config = relay_config(tmp_path, "a", tls_cert_path=folder / "cert.pem", tls_key_path=folder / "key.pem")
    async with Relay(config) as relay, \
            Terminal(relay.url, tmp_path / "t.sqlite", name="d", ca_file=folder / "ca.pem", backoff=FAST) as t:
        assert await t.wait_connected(timeout=5) is LinkState.OFFLINE
        error = t.status().last_error
        assert "mismatch, certificate is not valid for '127.0.0.1'" in error, error
        assert "host name the relay's certificate names" in error


# ---- peers, stock Yjs clients, HTTPS --------------------------------------------------------------


async def test_peer_link_over_wss_with_peer_ca_file(tmp_path: Path, pki: Pki) -> None:
    async with Relay(tls_config(tmp_path, "a", pki)) as a, \
            Relay(relay_config(tmp_path, "b", peers=[a.url], peer_ca_path=pki.ca_file)) as b:
        [link] = b.running.links
        async with WireClient(a.url, tls=pki.client_context(), actor="desk-a") as near, \
                WireClient(b.url, actor="desk-b") as far:
            await near.open(CAL)
            await far.open(CAL)
            rid = await far.book(CAL)  # written on b, reaches a over the wss:// peer link
            await near.wait_for(lambda: rid in near.replica(CAL).calendar.reservations)
            back = await near.book(CAL, hour=10)  # and back
            await far.wait_for(lambda: back in far.replica(CAL).calendar.reservations)
        assert link.state == "up" and link.connects == 1


class LogEvent(logging.Handler):
    """Sets :attr:`seen` when a record whose message contains ``fragment`` is logged (in the loop's thread)."""

    def __init__(self, fragment: str) -> None:
        super().__init__(logging.DEBUG)
        self.fragment = fragment
        self.seen = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.records.append(record)
            self.seen.set()


async def test_peer_link_to_an_untrusted_certificate_logs_the_problem_as_an_error(tmp_path: Path, pki: Pki) -> None:
    watcher = LogEvent("peer link TLS handshake failed")
    logger = logging.getLogger("accord.relay.peering")
    logger.addHandler(watcher)
    try:
        async with Relay(tls_config(tmp_path, "a", pki)) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
            async with asyncio.timeout(5):
                await watcher.seen.wait()
            [link] = b.running.links
            assert link.state == "down" and link.connects == 0
    finally:
        logger.removeHandler(watcher)
    record = watcher.records[0]
    assert record.levelno == logging.ERROR and "--peer-ca-file" in record.getMessage()
    assert "unable to get local issuer certificate" in record.__dict__["error"]


def _node_or_skip() -> tuple[str, Path]:
    modules = os.environ.get("ACCORD_NODE_MODULES")
    node = shutil.which("node")
    reason = None
    if not modules or not (Path(modules) / "yjs" / "package.json").is_file():
        reason = "ACCORD_NODE_MODULES has no yjs: run `make node` (make test sets it)"
    elif node is None:
        reason = "node is not on PATH"
    if reason is not None:
        if os.environ.get("CI_REQUIRE_NODE") == "1":
            pytest.fail(f"CI_REQUIRE_NODE=1 but {reason}")
        pytest.skip(reason)
    assert node is not None and modules is not None
    return node, Path(modules)


@pytest.mark.node
async def test_stock_yjs_client_edits_over_wss_trusting_the_ca(tmp_path: Path, pki: Pki, now: datetime) -> None:
    node, modules = _node_or_skip()
    async with Relay(tls_config(tmp_path, "a", pki)) as relay:
        booked = await relay.edit(CAL, lambda cal: cal.book(resource="room-1", start="2026-12-01T09:00Z",
                                                            end="2026-12-01T09:30Z", patient="P-0042", now=now))
        args = [node, str(YCLIENT), "edit", "--url", relay.url, "--calendar", CAL, "--reservation", booked.id,
                "--note", "edited over wss", "--timeout", "15"]
        # Node's `ws` verifies against its CA store plus NODE_EXTRA_CA_CERTS: the test CA only there.
        env = {**os.environ, "ACCORD_NODE_MODULES": str(modules), "NODE_EXTRA_CA_CERTS": str(pki.ca_file)}
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        try:
            async with asyncio.timeout(25):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert proc.returncode == 0, f"{events} {err.decode()[-2000:]}"
        assert any(e.get("event") == "flushed" for e in events)
        assert (await relay.calendar(CAL)).get(booked.id).note == "edited over wss"


async def test_https_serves_healthz_and_metrics(tmp_path: Path, pki: Pki) -> None:
    async with Relay(tls_config(tmp_path, "a", pki)) as relay:
        base = relay.board_url.rstrip("/")
        status, body = await asyncio.to_thread(https_get, f"{base}/healthz", pki.client_context())
        assert status == 200 and body.startswith("ok")
        status, body = await asyncio.to_thread(https_get, f"{base}/metrics", pki.client_context())
        assert status == 200 and "accord_connections" in body
        status, body = await asyncio.to_thread(https_get, relay.board_url, pki.client_context())
        assert status == 200 and "<html" in body.lower()


async def test_plaintext_clients_to_a_tls_port_fail_cleanly_and_tls_clients_keep_streaming(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async with Relay(tls_config(tmp_path, "a", pki)) as relay, \
            WireClient(relay.url, tls=pki.client_context()) as good:
        await good.open(CAL)
        await good.wait_synced(CAL)
        plain = relay.url.replace("wss://", "ws://")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="accord"):
            # A plaintext websocket client: no HTTP answer, the connection is closed.
            with pytest.raises(InvalidMessage):
                async with asyncio.timeout(5), connect(plain + "/.accord/v1"):
                    pass
            # A plaintext HTTP request: closed without a byte in answer.
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(5):
                assert await reader.read() == b""
            writer.close()
            # The open TLS connection still streams, and new TLS clients still get in.
            rid = await good.book(CAL)
            await good.wait_acked(CAL)
            async with WireClient(relay.url, tls=pki.client_context()) as late:
                await late.open(CAL)
                await late.wait_for(lambda: rid in late.replica(CAL).calendar.reservations)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_client_that_never_starts_the_tls_handshake_is_dropped_after_the_handshake_timeout(
        tmp_path: Path, pki: Pki) -> None:
    async with Relay(tls_config(tmp_path, "a", pki, handshake_timeout_s=0.3)) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)  # TCP only, then silence
        started = time.monotonic()
        async with asyncio.timeout(5):  # asyncio's default TLS handshake timeout is 60 s
            assert await reader.read() == b""
        writer.close()
        assert time.monotonic() - started < 3


# ---- refusing plaintext off loopback ---------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("desk-secret terminal clinic-*\n")
    return path


def test_non_loopback_plaintext_listener_is_refused_before_binding(tmp_path: Path, tokens: Path) -> None:
    config = RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=tmp_path / "a.sqlite", tokens_path=tokens)
    with pytest.raises(AccordError, match="without TLS") as refused:
        Relay(config)
    assert "--tls-cert" in str(refused.value) and "--insecure-plaintext" in str(refused.value)
    assert not (tmp_path / "a.sqlite").exists()  # refused before anything was opened or bound
    # The tokens question stays separate: --insecure-open does not answer the TLS one, nor the reverse.
    with pytest.raises(AccordError, match="without TLS"):
        Relay(RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=":memory:", insecure_open=True))
    with pytest.raises(AccordError, match="--tokens"):
        Relay(RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=":memory:", insecure_plaintext=True))
    # Half a TLS configuration is an error too.
    with pytest.raises(AccordError, match="both --tls-cert and --tls-key"):
        Relay(RelayConfig(relay_id="a", db_path=":memory:", tls_cert_path=tmp_path / "c.pem"))


def test_relay_cli_refuses_non_loopback_plaintext_with_exit_1(tmp_path: Path, tokens: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accord.logs.configure", lambda *_args, **_kw: None)
    port = free_port()
    code = relay_cli.main(["--id", "a", "--host", "0.0.0.0", "--port", str(port), "--db", str(tmp_path / "a.sqlite"),
                           "--tokens", str(tokens)])
    err = capsys.readouterr().err
    assert code == 1 and "--insecure-plaintext" in err and "Traceback" not in err
    assert not (tmp_path / "a.sqlite").exists()


def test_tls_relay_may_listen_off_loopback(tmp_path: Path, tokens: Path, pki: Pki) -> None:
    config = RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=":memory:", tokens_path=tokens,
                         tls_cert_path=pki.cert_file, tls_key_path=pki.key_file)
    assert Relay(config).url.startswith("wss://")


async def test_insecure_plaintext_listener_warns_on_every_start(tmp_path: Path, tokens: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    config = RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=tmp_path / "a.sqlite", tokens_path=tokens,
                         insecure_plaintext=True)
    for _start in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="accord.relay.server"):
            async with Relay(config):
                pass
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "without TLS" in r.getMessage()]
        assert len(warnings) == 1 and "--insecure-plaintext" in warnings[0].getMessage()


def test_bad_certificate_files_stop_the_relay_with_a_message(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = make_pki(tmp_path / "other", "other")
    cases = [(garbage, pki.key_file, "PEM"), (tmp_path / "missing.pem", pki.key_file, "cannot read"),
             (pki.cert_file, other.key_file, "KEY_VALUES_MISMATCH")]
    for cert, key, fragment in cases:
        with pytest.raises(AccordError, match=fragment):
            Relay(relay_config(tmp_path, "a", tls_cert_path=cert, tls_key_path=key))


# ---- reload --------------------------------------------------------------------------------------


def install(pki: Pki, cert_file: Path, key_file: Path) -> None:
    """Put ``pki``'s certificate and key where the relay reads them (as a renewal would)."""
    shutil.copyfile(pki.cert_file, cert_file)
    shutil.copyfile(pki.key_file, key_file)


@pytest.fixture
def live_files(tmp_path: Path, pki: Pki) -> Iterator[tuple[Path, Path]]:
    cert_file, key_file = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    install(pki, cert_file, key_file)
    yield cert_file, key_file


async def test_reload_gives_new_handshakes_the_new_certificate_while_open_connections_keep_streaming(
        tmp_path: Path, pki: Pki, live_files: tuple[Path, Path]) -> None:
    cert_file, key_file = live_files
    renewed = make_pki(tmp_path / "renewed", "renewed")  # another CA: only a new handshake can trust it
    config = relay_config(tmp_path, "a", tls_cert_path=cert_file, tls_key_path=key_file)
    async with Relay(config) as relay, \
            Terminal(relay.url, tmp_path / "t.sqlite", name="desk-1", ca_file=pki.ca_file, backoff=FAST) as t:
        await t.open(CAL)
        await t.synced()
        attempts = t.link.attempts if t.link else -1
        assert await presented_certificate(relay.port, pki.client_context()) == pki.cert_der

        install(renewed, cert_file, key_file)
        result = await relay.reload()
        assert result.reloaded == ("tls",) and result.failed == {}

        assert await presented_certificate(relay.port, renewed.client_context()) == renewed.cert_der
        with pytest.raises(ssl.SSLCertVerificationError):
            await presented_certificate(relay.port, pki.client_context())
        # The terminal's connection (made with the old certificate, which it alone trusts) streams on.
        booked = await t.book(CAL, resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                              patient="P-0042")
        await t.synced()
        assert t.link is not None and t.link.attempts == attempts and t.status().link is LinkState.ONLINE
        assert (await relay.calendar(CAL)).get(booked.id).patient == "P-0042"


async def test_reload_with_a_bad_certificate_keeps_the_old_one(tmp_path: Path, pki: Pki, live_files: tuple[Path, Path],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cert_file, key_file = live_files
    renewed, other = make_pki(tmp_path / "renewed", "renewed"), make_pki(tmp_path / "other", "other")
    config = relay_config(tmp_path, "a", tls_cert_path=cert_file, tls_key_path=key_file)
    async with Relay(config) as relay:
        for broken in ("garbage", "a new certificate with a key not its own"):
            if broken == "garbage":
                cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            else:  # loaded straight into the live context, this would leave it with no usable key
                shutil.copyfile(renewed.cert_file, cert_file)
                shutil.copyfile(other.key_file, key_file)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="accord.relay.server"):
                result = await relay.reload()
            assert result.reloaded == () and "tls" in result.failed, broken
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and "keep the old one" in errors[0].getMessage()
            assert await presented_certificate(relay.port, pki.client_context()) == pki.cert_der


@pytest.mark.slow
async def test_sighup_reloads_the_certificate_of_a_running_relay(tmp_path: Path, pki: Pki,
                                                                  live_files: tuple[Path, Path]) -> None:
    cert_file, key_file = live_files
    renewed = make_pki(tmp_path / "renewed", "renewed")
    process = RelayProcess(tmp_path, "a", "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    try:
        await process.start()
        url = f"wss://127.0.0.1:{process.port}"
        async with WireClient(url, tls=pki.client_context()) as open_before:
            await open_before.open(CAL)
            await open_before.wait_synced(CAL)
            assert await presented_certificate(process.port, pki.client_context()) == pki.cert_der

            install(renewed, cert_file, key_file)
            os.kill(process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "TLS certificate reloaded" not in process.log_path.read_text():  # the child's own word
                assert time.monotonic() < deadline, process.log_path.read_text()[-2000:]
                await asyncio.sleep(0.02)

            assert await presented_certificate(process.port, renewed.client_context()) == renewed.cert_der
            rid = await open_before.book(CAL)
            await open_before.wait_acked(CAL)
            async with WireClient(url, tls=renewed.client_context()) as after:
                await after.open(CAL)
                await after.wait_for(lambda: rid in after.replica(CAL).calendar.reservations)
        assert await process.stop() == 0
        log_text = process.log_path.read_text()
        assert "reloaded=tls" in log_text and "Traceback" not in log_text
    finally:
        process.cleanup()


# ---- the board in Chromium -----------------------------------------------------------------------


def _chromium_or_skip() -> str:
    candidates = [os.environ.get("ACCORD_CHROMIUM"), "/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium",
                  shutil.which("chromium-headless-shell"), shutil.which("chromium")]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    reason = "no Chromium binary (apt-get install -y chromium, or set ACCORD_CHROMIUM)" if found is None else None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    if reason is not None:
        if os.environ.get("ACCORD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ACCORD_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    assert found is not None
    return found


def spki_sha256(cert_pem: bytes) -> str:
    """Base64 SHA-256 of a certificate's public key, as Chromium's --ignore-certificate-errors-spki-list takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_board_over_https_shows_a_booking_and_books_over_wss(tmp_path: Path, pki: Pki, now: datetime) -> None:
    chromium = _chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    async with Relay(tls_config(tmp_path, "a", pki)) as relay:
        seeded = await relay.edit(CAL, lambda cal: cal.book(resource="room-1", start="2026-12-01T09:00Z",
                                                           end="2026-12-01T09:30Z", patient="P-0042", now=now))
        # Chromium trusts exactly this relay's key (not "any certificate"): the page and its wss:// socket.
        trusted = spki_sha256(pki.cert_file.read_bytes())
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=chromium, timeout=20_000,
                args=["--disable-gpu", "--disable-dev-shm-usage", f"--ignore-certificate-errors-spki-list={trusted}"])
            try:
                context = await browser.new_context(timezone_id="UTC", locale="en-GB")
                context.set_default_timeout(5000)
                page = await context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                assert relay.board_url.startswith("https://")
                await page.goto(f"{relay.board_url}board/{CAL}?day=2026-12-01")
                await expect(page.locator("#link")).to_have_attribute("data-state", "synced")
                row = page.locator(f'#rows tr[data-id="{seeded.id}"]')
                await expect(row).to_contain_text("P-0042")

                await page.fill("#actor", "Ana")
                await page.fill("#book-resource", "room-2")
                await page.fill("#book-date", "2026-12-01")
                await page.fill("#book-start", "10:00")
                await page.fill("#book-end", "10:30")
                await page.fill("#book-patient", "P-0043")
                await page.click("#book-submit")
                await expect(page.locator("#rows tr", has_text="P-0043")).to_have_count(1)
                calendar = await relay.calendar(CAL)
                await relay.wait_for(lambda: any(f.get("patient") == "P-0043" for f in calendar.all_fields().values()))
                assert errors == []
            finally:
                await browser.close()
