"""Provisioning, kit hygiene, site start command, app allow-list and audit log (no processes)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.app import Array, ArrayRecord
from flwr.common.serde import array_record_from_proto, array_record_to_proto
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

from client.app_pin import APP_ID, APP_VERSION, app_refusal
from client.audit import AuditLog, format_table, payload_digest
from client.cli import main as site_main
from client.site_config import SiteConfigError, load_site_config
from client.synth.siteconfig import site_config_toml
from server import pki
from server.cli import main as admin_main
from server.consortium import ConsortiumError, load_consortium
from server.provision import SITE_KEY, provision, read_registry

ROOT = Path(__file__).resolve().parents[2]
SANS = ("127.0.0.1", "localhost", "superlink")
SITES = ("alpha", "beta", "gamma")


def write_consortium(
    path: Path,
    sites: Sequence[str] = SITES,
    *,
    name: str = "testcons",
    sans: Sequence[str] = SANS,
    address: str = "127.0.0.1:9092",
    site_configs: Mapping[str, Path] | None = None,
    extra: str = "",
) -> Path:
    """A consortium file; runtime ports 9100, 9101, ... in site order."""
    text = (
        f'[consortium]\nname = "{name}"\n\n[superlink]\naddress = "{address}"\n'
        f"sans = {json.dumps(list(sans))}\n"
    )
    for i, site in enumerate(sites):
        text += f"\n[sites.{site}]\nruntime-port = {9100 + i}\n"
        if site_configs and site in site_configs:
            text += f'site-config = "{site_configs[site]}"\n'
    path.write_text(text + extra, encoding="utf-8")
    return path


def make_kits(tmp: Path, sites: Sequence[str] = SITES, **kw: Any) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "kits"
    provision(
        load_consortium(write_consortium(tmp / "consortium.toml", sites, **kw)), out
    )
    return out


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (SHA-256 of the bytes, mode) of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            stat.S_IMODE(p.stat().st_mode),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def private_key_files(out: Path) -> set[str]:
    return {
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
    }


def key_body_lines(out: Path, rel: str) -> set[str]:
    """The base64 lines of one private key file that no other key file of ``out`` has.

    OpenSSH keys share their first lines (format magic, key type), so only the lines
    unique to this key identify it in a leak.
    """

    def lines(path: Path) -> set[str]:
        text = path.read_text(encoding="ascii")
        return {ln for ln in text.splitlines() if ln and not ln.startswith("-----")}

    own = lines(out / rel)
    for other in private_key_files(out) - {rel}:
        own -= lines(out / other)
    return own


# --- certificates -------------------------------------------------------------------


def test_certificate_chain_and_extensions(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)
    ca_pem, server_pem = out / "ca.pem", out / "superlink" / "superlink.pem"

    # Execute
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    leaf = pki.verify_chain(ca_pem, server_pem)

    # Assert: the CA is a self-signed CA allowed to sign certificates
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    # the SuperLink certificate: issued by the CA, not a CA, serverAuth, exact SANs
    assert leaf.issuer == ca.subject
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    names += san.get_values_for_type(x509.DNSName)
    assert sorted(names) == sorted(SANS)
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for cert in (ca, leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP384R1)
    # the kit's key is the certificate's key
    server_key = serialization.load_pem_private_key(
        (out / "superlink" / "superlink-key.pem").read_bytes(), password=None
    )
    assert (
        server_key.public_key().public_numbers() == leaf.public_key().public_numbers()
    )
    # every kit carries the same CA
    for kit in ("superlink", "admin", *SITES):
        assert (out / kit / "ca.pem").read_bytes() == ca_pem.read_bytes()


def test_certificate_of_another_consortium_does_not_verify(tmp_path: Path) -> None:
    # Prepare
    ours = make_kits(tmp_path / "ours")
    theirs = make_kits(tmp_path / "theirs", name="othercons")

    # Execute / Assert
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature or ValueError
        pki.verify_chain(ours / "ca.pem", theirs / "superlink" / "superlink.pem")


# --- key files ----------------------------------------------------------------------


def test_private_keys_are_0600_and_only_where_they_belong(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)

    # Execute
    private = private_key_files(out)

    # Assert
    expected = {
        "ca/ca-key.pem",
        "superlink/superlink-key.pem",
        *(f"{s}/{SITE_KEY}" for s in SITES),
    }
    assert private == expected
    for rel in private:
        assert stat.S_IMODE((out / rel).stat().st_mode) == 0o600, rel
    for p in out.rglob("*"):
        if p.is_file() and str(p.relative_to(out)) not in private:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode in (0o644, 0o755), (p, oct(mode))
    # no private key bytes of one kit anywhere else (other kits, admin kit, registry)
    for rel in private:
        lines = key_body_lines(out, rel)
        assert len(lines) >= 2, rel
        for p in out.rglob("*"):
            if not p.is_file() or str(p.relative_to(out)) == rel:
                continue
            flat = p.read_bytes().replace(b"\n", b"")
            assert not any(line.encode() in flat for line in lines), (rel, p)
    assert not any("admin" in r.split("/")[0] for r in private)


def test_provision_prints_no_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    consortium = write_consortium(tmp_path / "consortium.toml")
    out = tmp_path / "kits"

    # Execute
    rc = admin_main(["provision", "--consortium", str(consortium), "--out", str(out)])
    printed = capsys.readouterr()

    # Assert
    assert rc == 0
    text = (printed.out + printed.err).replace("\n", "")
    assert "new kits: alpha, beta, gamma" in printed.out
    assert "PRIVATE KEY" not in text
    for rel in private_key_files(out):
        assert not any(line in text for line in key_body_lines(out, rel))


def test_site_key_is_openssh_p384_matching_its_public_key(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)
    registry = read_registry(out)

    for site in SITES:
        # Execute
        key = serialization.load_ssh_private_key(
            (out / site / SITE_KEY).read_bytes(), password=None
        )
        pub_fields = (out / site / f"{SITE_KEY}.pub").read_text().split()

        # Assert
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP384R1)
        derived = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert derived.decode().split() == pub_fields[:2]
        assert pub_fields[2] == f"{site}@testcons"
        fingerprint = hashlib.sha256(" ".join(pub_fields[:2]).encode()).hexdigest()
        assert registry["sites"][site]["key-sha256"] == fingerprint
        assert (out / "admin" / "keys" / f"{site}.pub").read_bytes() == (
            out / site / f"{SITE_KEY}.pub"
        ).read_bytes()
    fingerprints = {registry["sites"][s]["key-sha256"] for s in SITES}
    assert len(fingerprints) == len(SITES)


def test_admin_flower_config_names_the_consortium_connection(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)

    # Execute
    config = tomllib.loads((out / "admin" / "flwr" / "config.toml").read_text())

    # Assert
    assert config["superlink"]["default"] == "testcons"
    conn = config["superlink"]["testcons"]
    assert conn["address"] == "127.0.0.1:9092"
    assert Path(conn["root-certificates"]) == (out / "admin" / "ca.pem").resolve()


# --- adding and removing sites -------------------------------------------------------


def test_adding_a_site_leaves_existing_kits_byte_identical(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)
    kept = ("ca", "superlink", *SITES)
    before = {k: tree_digest(out / k) for k in kept}
    ca_before = (out / "ca.pem").read_bytes()

    # Execute
    path = write_consortium(tmp_path / "consortium.toml", (*SITES, "delta"))
    result = provision(load_consortium(path), out)

    # Assert
    assert result.created == ["delta"]
    assert result.kept == list(SITES)
    assert not result.ca_created and not result.revoked
    assert {k: tree_digest(out / k) for k in kept} == before
    assert (out / "ca.pem").read_bytes() == ca_before
    pki.verify_chain(out / "ca.pem", out / "superlink" / "superlink.pem")
    assert (out / "delta" / SITE_KEY).is_file()
    assert (out / "delta" / "ca.pem").read_bytes() == ca_before
    assert sorted(p.stem for p in (out / "admin" / "keys").glob("*.pub")) == [
        "alpha", "beta", "delta", "gamma",
    ]  # fmt: skip
    assert read_registry(out)["sites"]["delta"]["status"] == "active"


def test_changed_sans_reissue_only_the_superlink_certificate(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)
    sites_before = {s: tree_digest(out / s) for s in SITES}
    old_cert = (out / "superlink" / "superlink.pem").read_bytes()

    # Execute
    path = write_consortium(
        tmp_path / "consortium.toml", sans=(*SANS, "link.example.org")
    )
    provision(load_consortium(path), out)

    # Assert
    assert (out / "superlink" / "superlink.pem").read_bytes() != old_cert
    leaf = pki.verify_chain(out / "ca.pem", out / "superlink" / "superlink.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in san.get_values_for_type(x509.DNSName)
    assert {s: tree_digest(out / s) for s in SITES} == sites_before


def _assert_revoked(out: Path, site: str, fingerprint: str) -> None:
    registry = read_registry(out)
    assert registry["sites"][site]["status"] == "revoked"
    assert registry["sites"][site]["revoked"]
    assert not (out / site).exists()
    assert not (out / "admin" / "keys" / f"{site}.pub").exists()
    entries = [e for e in registry["revoked-keys"] if e["site"] == site]
    assert len(entries) == 1
    assert entries[0]["key-sha256"] == fingerprint
    assert entries[0]["unregistered"] is False


def test_site_removed_from_the_file_is_revoked(tmp_path: Path) -> None:
    # Prepare
    out = make_kits(tmp_path)
    fingerprint = read_registry(out)["sites"]["beta"]["key-sha256"]
    others = {k: tree_digest(out / k) for k in ("superlink", "alpha", "gamma")}

    # Execute
    path = write_consortium(tmp_path / "consortium.toml", ("alpha", "gamma"))
    result = provision(load_consortium(path), out)

    # Assert
    assert result.revoked == ["beta"]
    _assert_revoked(out, "beta", fingerprint)
    assert {k: tree_digest(out / k) for k in others} == others
    assert sorted(p.stem for p in (out / "admin" / "keys").glob("*.pub")) == [
        "alpha",
        "gamma",
    ]
    # a site that comes back gets a new key, the revoked one stays revoked
    provision(load_consortium(write_consortium(path, SITES)), out)
    registry = read_registry(out)
    assert registry["sites"]["beta"]["status"] == "active"
    assert registry["sites"]["beta"]["key-sha256"] != fingerprint
    assert [e["key-sha256"] for e in registry["revoked-keys"]] == [fingerprint]


def test_revoke_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = make_kits(tmp_path)
    fingerprint = read_registry(out)["sites"]["alpha"]["key-sha256"]

    # Execute
    rc = admin_main(["revoke", "--kits", str(out), "--site", "alpha"])
    unknown = admin_main(["revoke", "--kits", str(out), "--site", "nosuchsite"])
    again = admin_main(["revoke", "--kits", str(out), "--site", "alpha"])
    err = capsys.readouterr().err

    # Assert
    assert rc == 0
    _assert_revoked(out, "alpha", fingerprint)
    assert (unknown, again) == (2, 2)
    assert "'nosuchsite'" in err and "'alpha'" in err
    assert read_registry(out)["sites"]["beta"]["status"] == "active"
    assert len(read_registry(out)["revoked-keys"]) == 1


# --- consortium file errors -----------------------------------------------------------


def test_valid_consortium_file_parses(tmp_path: Path) -> None:
    consortium = load_consortium(write_consortium(tmp_path / "c.toml"))
    assert consortium.name == "testcons"
    assert consortium.address == "127.0.0.1:9092"
    assert consortium.sans == SANS
    assert [(s.name, s.runtime_port) for s in consortium.sites] == [
        ("alpha", 9100), ("beta", 9101), ("gamma", 9102),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"extra": "\n[consortium.more]\n"}, "consortium"),
        (
            {"extra": "\n[sites.alpha2]\nruntime-port = 9200\ncolour = 1\n"},
            "sites.alpha2",
        ),
        ({"extra": "\n[elsewhere]\nx = 1\n"}, "elsewhere"),
        ({"extra": "\n[sites.delta]\nruntime-port = 9100\n"}, "sites.*.runtime-port"),
        ({"address": "link.example.org:9092"}, "superlink.sans"),
        ({"sites": ("alpha", "Beta")}, "sites.Beta"),
        ({"sites": ("alpha", '"bad name"')}, "sites.bad name"),
        ({"address": "127.0.0.1"}, "superlink.address"),
        ({"name": "Bad Name"}, "consortium.name"),
    ],
)
def test_bad_consortium_file_names_the_key(
    tmp_path: Path, kwargs: dict[str, Any], key: str
) -> None:
    path = write_consortium(tmp_path / "c.toml", **kwargs)
    with pytest.raises(ConsortiumError) as err:
        load_consortium(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}"), message


def test_bad_consortium_file_is_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_consortium(tmp_path / "c.toml", sites=("alpha", "Beta"))
    rc = admin_main(
        ["provision", "--consortium", str(path), "--out", str(tmp_path / "k")]
    )
    assert rc == 2
    assert "sites.Beta" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# --- site config [federation] and the app allow-list ---------------------------------

PINNED = f"{APP_ID}=={APP_VERSION}"
DIGEST = "ab" * 32


def site_toml(folder: Path, name: str = "hospital_a", federation: str = "") -> Path:
    """A generated hospital's site config (no data needed to parse or print)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = site_config_toml("hospital_a").replace(
        'name = "hospital_a"', f'name = "{name}"'
    )
    path = folder / "site.toml"
    path.write_text(text + federation, encoding="utf-8")
    return path


def test_app_pin_matches_the_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    publisher = project["tool"]["flwr"]["app"]["publisher"]
    assert APP_ID == f"{publisher}/{project['project']['name']}"
    assert APP_VERSION == project["project"]["version"]


def test_federation_section_defaults_to_our_pinned_app(tmp_path: Path) -> None:
    cfg = load_site_config(site_toml(tmp_path))
    assert cfg.federation.accept_apps == (PINNED,)
    assert cfg.federation.accept_fab_sha256 == ()


def test_federation_section_is_parsed(tmp_path: Path) -> None:
    section = (
        f'\n[federation]\naccept-apps = ["{PINNED}", "other/app"]\n'
        f'accept-fab-sha256 = ["{DIGEST}"]\n'
    )
    cfg = load_site_config(site_toml(tmp_path, federation=section))
    assert cfg.federation.accept_apps == (PINNED, "other/app")
    assert cfg.federation.accept_fab_sha256 == (DIGEST,)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("accept-apps = []", "federation.accept-apps"),
        ('accept-apps = ["m3fm federated"]', "federation.accept-apps"),
        ('accept-apps = "m3fm/m3fm-federated"', "federation.accept-apps"),
        ('accept-fab-sha256 = ["ABC"]', "federation.accept-fab-sha256"),
        (f'accept-fab-sha256 = ["{DIGEST.upper()}"]', "federation.accept-fab-sha256"),
        ("accept-anything = true", "federation"),
    ],
)
def test_bad_federation_section_names_the_key(
    tmp_path: Path, section: str, key: str
) -> None:
    path = site_toml(tmp_path, federation=f"\n[federation]\n{section}\n")
    with pytest.raises(SiteConfigError) as err:
        load_site_config(path)
    assert key in str(err.value)


def test_app_refusal() -> None:
    accept = (PINNED,)
    assert app_refusal(APP_ID, APP_VERSION, DIGEST, accept) is None
    assert app_refusal("evil/app", APP_VERSION, DIGEST, accept) is not None
    assert app_refusal(APP_ID, "9.9.9", DIGEST, accept) is not None
    # an unpinned entry accepts any version of that app only
    assert app_refusal(APP_ID, "9.9.9", DIGEST, (APP_ID,)) is None
    assert app_refusal("evil/app", "9.9.9", DIGEST, (APP_ID,)) is not None
    # a bundle digest list must also contain the bundle's digest
    assert app_refusal(APP_ID, APP_VERSION, DIGEST, accept, (DIGEST,)) is None
    refusal = app_refusal(APP_ID, APP_VERSION, "cd" * 32, accept, (DIGEST,))
    assert refusal is not None and "accept-fab-sha256" in refusal
    assert "evil/app==" in (app_refusal("evil/app", "1", DIGEST, accept) or "")


# --- m3fm-site start --print -----------------------------------------------------------


def started(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[str], str]:
    """Exit code, printed command and stderr of ``m3fm-site start ... --print``."""
    rc = site_main(["start", *args, "--print"])
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    return rc, shlex.split(lines[-1]) if lines else [], printed.err


def flag(cmd: list[str], name: str) -> str:
    assert cmd.count(name) == 1, (name, cmd)
    return cmd[cmd.index(name) + 1]


def test_site_start_prints_the_supernode_command_and_writes_the_shim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    config = site_toml(tmp_path / "site")
    path = write_consortium(
        tmp_path / "consortium.toml",
        ("hospital_a",),
        site_configs={"hospital_a": config},
    )
    out = tmp_path / "kits"
    provision(load_consortium(path), out)
    kit = out / "hospital_a"

    # Execute: the site config named in the kit, then an explicit one and address
    rc, cmd, _ = started(capsys, "--kit", str(kit))
    rc2, cmd2, _ = started(
        capsys, "--kit", str(kit), "--site-config", str(config),
        "--superlink", "superlink:9092",
    )  # fmt: skip

    # Assert
    assert (rc, rc2) == (0, 0)
    assert cmd[0] == "flower-supernode"
    assert flag(cmd, "--superlink") == "127.0.0.1:9092"
    assert flag(cmd2, "--superlink") == "superlink:9092"
    for c in (cmd, cmd2):
        assert flag(c, "--root-certificates") == str(kit.resolve() / "ca.pem")
        assert flag(c, "--auth-supernode-private-key") == str(kit.resolve() / SITE_KEY)
        assert flag(c, "--node-config") == f'site-config="{config.resolve()}"'
        assert flag(c, "--port") == "9100"
        assert "--insecure" not in c
    shim = tmp_path / "site" / "state" / "bin" / "flwr-clientapp"
    assert shim.is_file() and shim.stat().st_mode & stat.S_IXUSR
    assert re.search(
        r'exec "[^"]*python[^"]*" -m client\.app_guard "\$@"', shim.read_text()
    )


def test_site_start_refuses_a_kit_of_another_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site_toml(tmp_path / "site", name="hospital_b")
    path = write_consortium(tmp_path / "consortium.toml", ("hospital_a",))
    out = tmp_path / "kits"
    provision(load_consortium(path), out)

    rc, cmd, err = started(
        capsys, "--kit", str(out / "hospital_a"), "--site-config", str(config)
    )
    rc_admin, cmd_admin, err_admin = started(
        capsys, "--kit", str(out / "admin"), "--site-config", str(config)
    )

    assert (rc, cmd) == (2, [])
    assert "'hospital_b'" in err and "'hospital_a'" in err
    assert (rc_admin, cmd_admin) == (2, [])
    assert "not a site kit" in err_admin


# --- audit log --------------------------------------------------------------------------


def record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in values.items()})


def over_the_wire(rec: ArrayRecord) -> ArrayRecord:
    data = array_record_to_proto(rec).SerializeToString()
    return array_record_from_proto(ProtoArrayRecord.FromString(data))


def test_payload_digest_same_on_both_ends_and_changes_with_one_byte() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    values = {
        "head.w": rng.standard_normal((4, 3)).astype(np.float32),
        "fusion.b": rng.standard_normal(5).astype(np.float64),
    }
    sent = record(values)

    # Execute
    site_sha, site_sizes = payload_digest(sent)
    server_sha, server_sizes = payload_digest(over_the_wire(sent))
    reordered_sha, _ = payload_digest(record(dict(reversed(values.items()))))
    changed = {k: v.copy() for k, v in values.items()}
    changed["head.w"].reshape(-1).view(np.uint8)[7] ^= 1
    changed_sha, _ = payload_digest(record(changed))

    # Assert
    assert re.fullmatch(r"[0-9a-f]{64}", site_sha)
    assert site_sha == server_sha == reordered_sha
    assert site_sizes == server_sizes
    assert site_sizes == {k: len(sent[k].data) for k in values}
    assert changed_sha != site_sha


def test_audit_log_appends_skips_a_torn_line_and_is_private(tmp_path: Path) -> None:
    # Prepare
    log = AuditLog.for_state_dir(tmp_path / "state")

    # Execute
    first = log.append("received", run_id=7, round=1, type="train")
    second = log.append("replied", run_id=7, round=1, status=0, epsilon=0.5)
    with open(log.path, "ab") as f:  # a crash in the middle of a line
        f.write(b'{"time": "2026-01-01T00:00:00", "event": "rep')
    torn = log.records()
    third = log.append("received", run_id=7, round=2, type="train")

    # Assert
    assert log.path == tmp_path / "state" / "audit.jsonl"
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert list(first)[:2] == ["time", "event"]
    assert torn == [first, second]
    assert log.records() == [first, second, third]


def test_audit_table_renders() -> None:
    rows = [
        {"time": "2026-01-01T10:00:00.123+00:00", "event": "received", "run_id": 7,
         "round": 1, "type": "train"},
        {"time": "2026-01-01T10:01:00.000+00:00", "event": "replied", "run_id": 7,
         "round": 1, "type": "train", "status": "ok", "arrays": {"a": 16, "b": 8},
         "epsilon": 1.23456, "sha256": "0123456789abcdef" * 4},
        {"event": "refused", "reason": "app evil/app==1 is not in federation.accept-apps"},
    ]  # fmt: skip

    table = format_table(rows).splitlines()

    assert len(table) == 4
    assert table[0].split() == [
        "time", "event", "run", "round", "type", "status", "arrays", "bytes",
        "epsilon", "sha256",
    ]  # fmt: skip
    assert table[2].split() == [
        "2026-01-01T10:01:00", "replied", "7", "1", "train", "ok", "2", "24", "1.235",
        "0123456789ab",
    ]  # fmt: skip
    assert "refused" in table[3] and "federation.accept-apps" in table[3]
    assert table[2].index("replied") == table[0].index("event")
    assert table[2].index("1.235") == table[0].index("epsilon")


def test_certificate_always_names_loopback_for_the_serverapp_connection(
    tmp_path: Path,
) -> None:
    path = write_consortium(
        tmp_path / "c.toml", address="link.example.org:9092", sans=("link.example.org",)
    )
    assert load_consortium(path).sans == ("link.example.org", "127.0.0.1")
