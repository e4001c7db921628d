"""Flags, their environment twins, and the metadata server's region."""

from __future__ import annotations

import http.server
import threading

import pytest

from controller.config import env_name, parse
from controller.gcp.metadata import cluster_region, region_of


def test_defaults_match_the_behaviour_contract():
    cfg = parse([], {})
    assert (cfg.default_timeout, cfg.max_timeout, cfg.resync_period) == (30, 86400, 600.0)
    assert cfg.default_draining_timeout == 0
    assert cfg.annotation_prefix == "ingress-timeout.dev"
    assert not cfg.dry_run and not cfg.once and cfg.namespaces == frozenset()
    assert cfg.lease_wait == 20.0  # past a dead holder's 15 s Lease


def test_every_flag_has_an_env_twin_and_the_flag_wins():
    env = {
        env_name("max-timeout"): "600",
        env_name("namespaces"): "shop, bank,",
        env_name("dry-run"): "true",
        env_name("project"): "from-env",
        "GOOGLE_CLOUD_PROJECT": "from-google",
    }
    cfg = parse(["--project", "from-flag"], env)
    assert cfg.max_timeout == 600
    assert cfg.namespaces == frozenset({"shop", "bank"})
    assert cfg.dry_run is True
    assert cfg.project == "from-flag"
    assert parse([], {"GOOGLE_CLOUD_PROJECT": "from-google"}).project == "from-google"


def test_help_names_each_env_twin(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    for flag in [
        "kubeconfig",
        "project",
        "region",
        "compute-endpoint",
        "annotation-prefix",
        "default-timeout",
        "default-draining-timeout",
        "max-timeout",
        "namespaces",
        "workers",
        "write-rate",
        "resync-period",
        "dry-run",
        "once",
        "lease-wait",
        "log-format",
    ]:
        assert f"--{flag}" in text and env_name(flag) in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-timeout", "0"],
        ["--max-timeout", "86401"],
        ["--workers", "0"],
        ["--log-format", "xml"],
        ["--write-rate", "-1"],
        ["--default-timeout", "0"],
        ["--lease-wait", "-1"],
        ["--default-draining-timeout", "-1"],
        ["--default-draining-timeout", "3601"],
    ],
)
def test_bad_flags_are_refused_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv, {})
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("location", "region"),
    [
        ("europe-west1", "europe-west1"),
        ("europe-west1-b", "europe-west1"),
        ("us-central1-a\\n", "us-central1"),
    ],
)
def test_region_of_a_zonal_or_regional_cluster(location, region):
    assert region_of(location.replace("\\n", "\n")) == region


def _metadata_server(body: bytes, status: int = 200):
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Metadata-Flavor", ""))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_cluster_region_comes_from_the_metadata_server():
    server, seen = _metadata_server(b"europe-west4-a")
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        assert cluster_region({"GCE_METADATA_HOST": host}) == "europe-west4"
        assert seen == ["Google"]
    finally:
        server.shutdown()


def test_cluster_region_is_empty_when_the_metadata_server_fails():
    server, _ = _metadata_server(b"nope", status=404)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        assert cluster_region({"GCE_METADATA_HOST": host}) == ""
    finally:
        server.shutdown()
