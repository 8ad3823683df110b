"""The load benchmark runs end to end at a tiny size (real server, real token) and writes its JSON and PNG."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from benches import load
from tests.bench_runs import run_bench
from tests.gateway.gwclient import GatewayServer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOP_LEVEL = ("messages_per_s", "p50_ms", "p99_ms", "raw_sign_ops_per_s", "fraction_of_hsm")
NEW_TOP_LEVEL = (
    "library_messages_per_s",
    "fraction_of_library",
    "messages_per_s_1_process",
    "fraction_of_library_1_process",
)
SWEEP = (2, 3)


@pytest.mark.timeout(240)  # a hard bound even on a loaded machine; the run itself takes ~20 s
def test_load_tiny_run(tmp_path: Path) -> None:
    argv = [
        "--groups",
        "2",
        "--duration",
        "3",
        "--raw-seconds",
        "0.2",
        "--clients-sweep",
        ",".join(map(str, SWEEP)),
        "--sweep-duration",
        "1",
        "--library-duration",
        "1",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
    ]
    out, err = run_bench("benches.load", argv, timeout=200, what="the tiny load run")

    data = json.loads((tmp_path / "load.json").read_text())
    assert list(data)[: len(TOP_LEVEL)] == list(TOP_LEVEL)
    for key in TOP_LEVEL + NEW_TOP_LEVEL:
        assert isinstance(data[key], int | float) and math.isfinite(data[key]) and data[key] > 0, (
            key,
            data[key],
        )
    assert data["messages"] > 0 and data["errors"] == {}, data["errors"]
    assert data["messages_per_s"] == pytest.approx(data["messages"] / data["elapsed_s"], rel=0.01)
    assert data["p50_ms"] <= data["p99_ms"]
    lat = data["latency_ms"]
    assert (
        lat["send"]["p50"] < lat["send_and_process"]["p50"]
        and lat["process"]["p50"] < lat["send_and_process"]["p50"]
    )
    # One signature per protected application message, counted by the gateway itself.
    signatures = data["gateway_signatures"]
    assert signatures["count"] == data["messages"], signatures
    assert data["fraction_of_hsm"] == pytest.approx(
        signatures["per_s"] / data["raw_sign_ops_per_s"], rel=0.01
    )
    assert 0 < data["fraction_of_hsm"] < 1
    raw = data["raw_sign"]
    assert len(raw["rounds_before_ops_per_s"]) == len(raw["rounds_after_ops_per_s"]) >= 1
    assert min(raw["rounds_before_ops_per_s"] + raw["rounds_after_ops_per_s"]) > 0
    assert data["config"]["groups"] == 2 and data["config"]["clients"] == 2
    assert data["config"]["identities"] == 4

    check_library(data)
    check_sweep(data)
    check_one_process(data)

    png = (tmp_path / "load.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and png.endswith(b"IEND\xaeB`\x82")
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 400

    assert "messages sent + processed" in out and "fraction of HSM" in out and "fraction of library" in out
    assert "load [" in err  # the progress bar


def check_library(data: dict[str, Any]) -> None:
    """The in-process library figures: same work, counted, and the fraction is the ratio of the two rates."""
    assert data["fraction_of_library"] == pytest.approx(
        data["messages_per_s"] / data["library_messages_per_s"], rel=0.01
    )
    lib = data["library"]
    assert lib["messages_per_s"] == data["library_messages_per_s"]
    assert lib["messages"] > 0 and lib["threads"] == lib["groups"] == 2
    assert lib["messages_per_s"] == pytest.approx(lib["messages"] / lib["elapsed_s"], rel=0.01)
    assert lib["crypto_backend"] and "Pkcs11KeyStore" in lib["how"] and "protect" in lib["what"]
    lat = lib["latency_ms"]
    assert 0 < lat["protect_and_process"]["p50"] <= lat["protect_and_process"]["p99"]


def check_one_process(data: dict[str, Any]) -> None:
    """Two gateway processes (serve --workers 2) for the main figures, one process beside them."""
    assert data["workers"] == 2 and "--workers 2" in data["deployment"]
    one = data["one_process"]
    assert one["messages"] > 0 and one["errors"] == {} and one["p50_ms"] <= one["p99_ms"]
    assert data["messages_per_s_1_process"] == pytest.approx(one["messages"] / one["elapsed_s"], rel=0.01)
    assert data["fraction_of_library_1_process"] == pytest.approx(
        data["messages_per_s_1_process"] / data["library_messages_per_s"], rel=0.01
    )


def check_sweep(data: dict[str, Any]) -> None:
    sweep = data["clients_sweep"]
    assert [point["clients"] for point in sweep] == list(SWEEP)
    for point in sweep:
        assert point["groups"] == point["clients"] and point["messages"] > 0 and point["errors"] == {}
        for key in ("messages_per_s", "p50_ms", "p99_ms"):
            assert isinstance(point[key], int | float) and math.isfinite(point[key]) and point[key] > 0
        assert point["p50_ms"] <= point["p99_ms"]


def _run_remote(argv: list[str], env: dict[str, str]) -> tuple[str, str]:
    """``python -m benches.load --url …`` to its end (bounded against hanging, never a speed gate)."""
    return run_bench("benches.load", argv, timeout=90, what="the remote load run", env=env)


def check_remote_report(data: dict[str, Any], url: str, token_kind: str, groups: int) -> None:
    """The figures of a remote run agree with one another (no absolute time gates)."""
    assert data["mode"] == "remote" and data["target"] == url and data["token"] == token_kind
    for key in ("messages_per_s", "p50_ms", "p99_ms"):
        assert isinstance(data[key], int | float) and math.isfinite(data[key]) and data[key] > 0, key
    assert data["messages"] > 0 and data["errors"] == {}, data["errors"]
    assert data["messages_per_s"] == pytest.approx(data["messages"] / data["elapsed_s"], rel=0.01)
    assert data["p50_ms"] <= data["p99_ms"] == data["latency_ms"]["send_and_process"]["p99"]
    assert sum(data["timeline_messages_per_s"]) <= data["messages"]
    # The deployed gateway's own count: one signature per protected message.
    assert data["gateway_signatures"]["count"] == data["messages"], data["gateway_signatures"]
    assert data["config"]["groups"] == groups and data["config"]["identities"] == 2 * groups
    assert data["config"]["transport"] == f"HTTP to {url}"
    for absent in ("raw_sign_ops_per_s", "fraction_of_hsm", "library", "fraction_of_library"):
        assert absent not in data


@pytest.mark.timeout(240)
def test_load_against_a_separately_started_gateway(tmp_path: Path) -> None:
    """``--url --token`` drives a gateway this benchmark did not start: with the admin token it makes a
    tenant of its own, with a tenant token it works in that tenant; both through the shipped client."""
    server = GatewayServer(tmp_path / "gw")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSGW_")}
        argv = ["--url", url, "--groups", "2", "--duration", "2", "--sweep-duration", "1"]
        out, err = _run_remote(
            [*argv, "--token", server.admin_token, "--clients-sweep", "3", "--out", str(tmp_path)], env
        )
        admin_run = json.loads((tmp_path / "load-remote.json").read_text())
        check_remote_report(admin_run, url, "admin", 2)
        assert [point["clients"] for point in admin_run["clients_sweep"]] == [3]
        assert admin_run["clients_sweep"][0]["errors"] == {} and admin_run["clients_sweep"][0]["messages"] > 0
        assert "messages sent + processed" in out and "setup: 2 groups" in err
        assert not (tmp_path / "load.json").exists() and not (tmp_path / "load.png").exists()
        tenants = server.admin.get("/v1/tenants").expect(200)["tenants"]
        assert [t["name"][:5] for t in tenants] == ["load-"]

        _, token = server.admin.create_tenant("bench")
        out_dir = tmp_path / "tenant"
        _run_remote(
            [*argv, "--clients-sweep", "none", "--out", str(out_dir)], {**env, "MLSGW_BENCH_TOKEN": token}
        )
        tenant_run = json.loads((out_dir / "load-remote.json").read_text())
        check_remote_report(tenant_run, url, "tenant", 2)
        assert tenant_run["clients_sweep"] == []
        assert len(server.admin.get("/v1/tenants").expect(200)["tenants"]) == 2  # none made this time
        assert len(server.client(token).get("/v1/identities").expect(200)["identities"]) == 4
    finally:
        server.kill()


def test_parse_sweep() -> None:
    assert load.parse_sweep("8,32") == (8, 32)
    assert load.parse_sweep("none") == load.parse_sweep("") == ()
    with pytest.raises(ValueError):
        load.parse_sweep("8,0")


def test_percentile() -> None:
    assert math.isnan(load.percentile([], 50))
    assert load.percentile([5.0], 99) == 5.0
    assert load.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert load.percentile(list(map(float, range(101))), 99) == 99.0


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        load.main(["--groups", "0"])
    with pytest.raises(SystemExit):
        load.main(["--duration", "-1"])
    with pytest.raises(SystemExit):
        load.main(["--clients-sweep", "8,x"])
    with pytest.raises(SystemExit):
        load.main(["--library-duration", "0"])
    with pytest.raises(SystemExit):
        load.main(["--workers", "0"])
    with pytest.raises(SystemExit):
        load.main(["--url", "http://127.0.0.1:1", "--token", ""])
    with pytest.raises(SystemExit):
        load.main(["--url", "127.0.0.1:8080", "--token", "t"])
