"""Per-node addresses (issue 19): ``fleet init --node-host``, ``--bind`` and
``--spec``; the fleet directory appears whole or not at all."""
import json
import os
import random
import stat
import tarfile

import pytest
from conftest import vault_cli
from cryptography import x509

from vault_raft import client as C
from vault_raft.fleet import create
from vault_raft.fleet.config import ConfigError, FleetInfo, NodeConfig
from vault_raft.fleet.create import init_fleet, load_spec, plan_addresses
from vault_raft.fleet.export import NODE_FILES, export_node
from vault_raft.ops.cluster import LocalCluster, free_base_port
from vault_raft.raft.pki import cert_hosts


def _node(d, nid):
    return json.load(open(os.path.join(d, nid, "node.json")))


def test_defaults_are_unchanged(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=31000, check_ports=False)
    fleet = FleetInfo.load(os.path.join(d, "fleet.json"))
    assert [n.api for n in fleet.nodes] == [f"https://127.0.0.1:{31100 + i}" for i in (1, 2, 3)]
    for i in (1, 2, 3):
        c = _node(d, f"n{i}")
        assert c["raft_addr"] == f"127.0.0.1:{31000 + i}"
        assert (c["api_host"], c["api_port"], c["metrics_port"]) == \
            ("127.0.0.1", 31100 + i, 31200 + i)
        assert c["bind"] == "127.0.0.1"
        cfg = NodeConfig.load(os.path.join(d, f"n{i}"))
        assert cfg.listen_host == "127.0.0.1" and cfg.raft_bind is None
        assert cert_hosts(open(os.path.join(d, f"n{i}", "tls.crt"), "rb").read()) == \
            ["127.0.0.1"]


def test_node_hosts_bind_and_certificates(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=31000, check_ports=False, bind="0.0.0.0",
               node_hosts={"n2": "10.213.9.2", "n3": "vault-3.example"})
    fleet = FleetInfo.load(os.path.join(d, "fleet.json"))
    assert [n.api for n in fleet.nodes] == ["https://127.0.0.1:31101",
                                            "https://10.213.9.2:31102",
                                            "https://vault-3.example:31103"]
    n3 = _node(d, "n3")
    assert n3["raft_addr"] == "vault-3.example:31003" and n3["bind"] == "0.0.0.0"
    assert n3["partners"] == ["127.0.0.1:31001", "10.213.9.2:31002"]
    assert NodeConfig.load(os.path.join(d, "n3")).raft_bind == "0.0.0.0:31003"
    pem = open(os.path.join(d, "n2", "tls.crt"), "rb").read()
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.213.9.2"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == \
        ["vault-raft:raft/10.213.9.2:31002"]
    assert cert_hosts(open(os.path.join(d, "n3", "tls.crt"), "rb").read()) == \
        ["vault-3.example"]


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_spec_file(tmp_path, fmt):
    nodes = [{"host": "10.213.9.1", "raft_port": 7000, "api_port": 7443},
             {"id": "n2", "host": "10.213.9.2", "raft_port": 7000, "api_port": 7443,
              "metrics_port": 9100},
             {"host": "10.213.9.3", "raft_port": 7000, "api_port": 7443, "bind": "0.0.0.0"}]
    spec = tmp_path / f"spec.{fmt}"
    if fmt == "json":
        spec.write_text(json.dumps({"nodes": nodes}))
    else:
        spec.write_text("".join(
            "[[nodes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in n.items())
            for n in nodes))
    d = str(tmp_path / "f")
    r = vault_cli("fleet", "init", "--dir", d, "--spec", str(spec))
    assert r.returncode == 0, r.stderr
    assert [n.api for n in FleetInfo.load(os.path.join(d, "fleet.json")).nodes] == \
        [f"https://10.213.9.{i}:7443" for i in (1, 2, 3)]
    n2 = _node(d, "n2")
    assert (n2["raft_addr"], n2["metrics_port"], n2["bind"]) == ("10.213.9.2:7000", 9100,
                                                                 "10.213.9.2")
    assert _node(d, "n3")["bind"] == "0.0.0.0"
    assert _node(d, "n1")["metrics_port"] == 7301  # the default: base+200+i


def test_bad_addresses_are_refused_and_nothing_is_written(tmp_path):
    d = str(tmp_path / "f")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"nodes": [{"host": "10.0.0.1"}] * 3}))  # same host, ports ok
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"host": "10.0.0.1", "raft_port": 7000,
                                          "api_port": 7000}, {"host": "10.0.0.2"},
                                         {"host": "10.0.0.3"}]}))
    cases = [
        (["--node-host", "n4=10.0.0.4"], "no node 'n4'"),
        (["--node-host", "n2"], "nK=HOST"),
        (["--node-host", "n2=bad_host!"], "DNS name"),
        (["--node-host", "n2=vault-2.example"], "--bind"),
        (["--node-host", "n2=0.0.0.0"], "--bind"),
        (["--bind", "everywhere"], "--bind"),
        (["--spec", str(bad)], "also"),
        (["--spec", str(spec), "--nodes", "5"], "lists 3 nodes"),
        (["--spec", str(tmp_path / "missing.json")], "fleet spec"),
        (["--host", "not-an-ip"], "IPv4"),
    ]
    for args, words in cases:
        r = vault_cli("fleet", "init", "--dir", d, "--base-port", "31000", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not os.path.exists(d), args
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".fleet-init-")]
    r = vault_cli("fleet", "init", "--dir", d, "--base-port", "31000", "--spec", str(spec))
    assert r.returncode == 0, r.stderr  # one host, distinct ports (base+i): accepted


def test_non_empty_directory_is_refused(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    r = vault_cli("fleet", "init", "--dir", str(d), "--base-port", "31000")
    assert r.returncode == 2 and "not empty" in r.stderr and "fleet.json" in r.stderr
    assert sorted(os.listdir(d)) == ["notes.txt"]
    empty = tmp_path / "e"
    empty.mkdir()
    init_fleet(str(empty), 3, base_port=31000, check_ports=False)  # an empty one is filled
    assert os.path.exists(empty / "fleet.json")


def test_a_failure_half_way_leaves_no_partial_fleet(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(create, "add_tenant", boom)  # the last step of writing a fleet
    d = str(tmp_path / "f")
    with pytest.raises(OSError, match="disk full"):
        init_fleet(d, 3, base_port=31000, check_ports=False)
    assert os.listdir(tmp_path) == []


def test_plan_addresses_checks_port_collisions_per_host():
    # the same ports on different hosts are fine (one node per machine)
    spec = {"nodes": [{"host": f"10.0.0.{i}", "raft_port": 7000, "api_port": 7001,
                       "metrics_port": None} for i in (1, 2, 3)]}
    addrs = plan_addresses(spec=spec)
    assert [a.raft_addr for a in addrs] == ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
    assert all(a.metrics_port is None for a in addrs)
    with pytest.raises(ConfigError, match="also"):
        plan_addresses(spec={"nodes": [{"host": "10.0.0.1", "raft_port": 7000}] * 3})


def test_load_spec_refuses_unknown_keys(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"nodes": [{"hots": "10.0.0.1"}]}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_spec(str(p))


@pytest.mark.cluster
def test_fleet_on_distinct_loopback_hosts_with_a_wildcard_bind(tmp_path):
    """Each node advertises its own loopback address and listens on 0.0.0.0:
    the nodes find each other by their advertised addresses (and the mTLS
    identity check, which names them), clients reach each at its own URL."""
    base = free_base_port(3, host="0.0.0.0", start=20000, stop=40000, step=10,
                          rng=random.Random())
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=base, bind="0.0.0.0",
               node_hosts={f"n{i}": f"127.0.0.{20 + i}" for i in (1, 2, 3)})
    cl = LocalCluster(d)
    try:
        cl.start()
        cl.wait_leader(30)
        cl.wait_healthy(timeout=30)
        assert cl.api["n2"] == f"https://127.0.0.22:{base + 102}"
        cli = C.Client(os.path.join(d, "fleet.json"))
        cli.enroll("alice", "right code", b"s3cret", max_attempts=3)
        with pytest.raises(C.WrongCode):
            cli.recover("alice", "wrong code")
        assert cli.recover("alice", "right code").secret == b"s3cret"
    finally:
        cl.stop(timeout=5)
    assert not cl.running()


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_fleet_export_directory_and_archive(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=31000, check_ports=False, node_hosts={"n2": "10.213.9.2"})
    out = str(tmp_path / "n2-host")
    r = vault_cli("fleet", "export", "--dir", d, "--node", "n2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted(NODE_FILES)
    assert _mode(out) == 0o700 and all(_mode(os.path.join(out, f)) == 0o600 for f in NODE_FILES)
    for f in NODE_FILES:
        assert open(os.path.join(out, f), "rb").read() == \
            open(os.path.join(d, "n2", f), "rb").read()
    cfg = NodeConfig.load(out)  # what `vault-raft node --dir` reads
    assert cfg.node_id == "n2" and cfg.raft_addr == "10.213.9.2:31002"
    assert cfg.tls_config() is not None and cfg.api_ssl_context() is not None
    # never the operator's keys, never another node's
    r = vault_cli("fleet", "export", "--dir", d, "--node", "n2", "--out", out)
    assert r.returncode == 2 and "refusing" in r.stderr
    for name in ("n3.tar", "n3.tar.gz"):
        arc = str(tmp_path / name)
        r = vault_cli("fleet", "export", "--fleet", d, "--node", "n3", "--out", arc)
        assert r.returncode == 0, r.stderr
        assert _mode(arc) == 0o600
        with tarfile.open(arc) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == sorted(["n3"] + [f"n3/{f}" for f in NODE_FILES])
        assert members["n3"].isdir() and members["n3"].mode == 0o700
        assert all(members[f"n3/{f}"].mode == 0o600 for f in NODE_FILES)
    r = vault_cli("fleet", "export", "--dir", d, "--node", "n9", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no node 'n9'" in r.stderr
    assert not os.path.exists(tmp_path / "x")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".node-export-")]


def test_fleet_export_includes_the_published_bundle(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=31000, check_ports=False)
    open(os.path.join(d, "n1", "trust.bin"), "wb").write(b"bundle")
    open(os.path.join(d, "n1", "node.log"), "wb").write(b"runtime")
    os.makedirs(os.path.join(d, "n1", "data"))
    assert export_node(d, "n1", str(tmp_path / "o")) == list(NODE_FILES) + ["trust.bin"]
    assert "node.log" not in os.listdir(tmp_path / "o")
