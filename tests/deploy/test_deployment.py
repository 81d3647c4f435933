"""A real TLS + SuperNode-auth consortium on 127.0.0.1, started from provisioned kits (slow).

One SuperLink and three SuperNodes as separate processes, started with the product's own
commands; two DP rounds of the tiny preset, then two more through SecAgg+. Checked: the
model changed, each site's audit log matches what the server recorded on receipt, and
every intruder is refused by the component that should refuse it.
"""

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import torch

from client.prepare import prepare_site
from client.runtime import seeded_model
from client.site_config import load_site_config
from client.synth import synthesize_site
from server import pki

from .harness import Deployment, consortium_toml

SITES = (("hospital_a", 10, 1), ("hospital_b", 10, 2), ("hospital_c", 10, 3))
ROUNDS = {
    "num-server-rounds": 2,
    "local-steps": 2,
    "batch-size": 4,
    "min-sites": 3,
    "round-timeout": 240.0,
}


def _add_private_tags(folder: Path, sentinel: str, every: int = 7) -> int:
    """Write a private tag holding ``sentinel`` into every ``every``-th DICOM file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    tagged = 0
    for path in files[::every]:
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # the generator's deliberately corrupt files
            continue
        block = ds.private_block(0x0011, "M3FM LEAK PROBE", create=True)
        block.add_new(0x01, "LO", sentinel)
        ds.save_as(path)
        tagged += 1
    return tagged


def _sentinels(folder: Path) -> list[str]:
    truth = json.loads((folder / "truth.json").read_text())
    out = []
    for exam in truth["exams"]:
        out += [exam[k] for k in ("display_name", "patient_name", "birth_date", "mrn", "patient_id", "exam_id")]  # fmt: skip
    return [s for s in out if isinstance(s, str) and len(s) >= 6]


def _leaks(
    roots: list[Path], sentinels: list[str]
) -> tuple[int, list[tuple[str, str]]]:
    """Bytes searched under ``roots`` and every (file, sentinel) found."""
    needles = {s: s.encode() for s in sentinels}
    searched, found = 0, []
    for root in roots:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                searched += len(data)
                found += [(str(p), s) for s, b in needles.items() if b in data]
    return searched, found


def _sites(tmp: Path, sentinels: list[str]) -> dict[str, Path]:
    out = {}
    for name, patients, seed in SITES:
        folder = tmp / name
        synthesize_site(name, folder, patients=patients, seed=seed)
        probe = f"PRIVATE-TAG-PROBE-{name}-{seed:04d}"
        assert _add_private_tags(folder / "dicom", probe) > 0
        sentinels += [probe, *_sentinels(folder)]
        prepare_site(load_site_config(folder / "site.toml"), preset="tiny")
        out[name] = folder / "site.toml"
    # A fourth member whose config accepts only another app: hospital_a's data, its own
    # name, state and allow-list.
    text = (tmp / "hospital_a" / "site.toml").read_text()
    text = text.replace('name = "hospital_a"', 'name = "hospital_d"').replace(
        'state-dir = "state"', 'state-dir = "state_d"'
    )
    text += '\n[federation]\naccept-apps = ["m3fm/some-other-app==1.0"]\n'
    (tmp / "hospital_a" / "site_d.toml").write_text(text)
    out["hospital_d"] = tmp / "hospital_a" / "site_d.toml"
    return out


def _intruder_kit(dep: Deployment, name: str, source: str, tmp: Path) -> Path:
    kit = tmp / name
    shutil.copytree(dep.kits / source, kit)
    info = json.loads((kit / "kit.json").read_text())
    info["runtime-port"] += 1000
    (kit / "kit.json").write_text(json.dumps(info))
    return kit


def _wait_exit(
    dep: Deployment, names: list[str], timeout: float = 120
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    codes = {}
    while time.monotonic() < deadline and len(codes) < len(names):
        for n in names:
            if n not in codes and dep.procs[n].poll() is not None:
                codes[n] = dep.procs[n].returncode
        time.sleep(1)
    return codes


def _audit_replies(site_toml: Path, run_dir: Path) -> dict[tuple[int, str], str]:
    site = load_site_config(site_toml)
    out = {}
    for line in (site.state_dir / "audit.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "reply" and rec["type"] == "train" and rec.get("arrays"):
            out[(rec["round"], site.name)] = rec["sha256"]
    return out


def _kill_mid_round(dep: Deployment, sites: dict[str, Path], runs: Path) -> None:
    c_audit = load_site_config(sites["hospital_c"]).state_dir / "audit.jsonl"
    seen = len(c_audit.read_text().splitlines())
    cfg = ROUNDS | {"output-dir": str(runs), "run-name": "kill", "min-sites": 2, "round-timeout": 150.0}  # fmt: skip
    run = dep.run_async("flwr-kill", cfg)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # hospital_c has received round 1: kill it
        if any('"instruction"' in x for x in c_audit.read_text().splitlines()[seen:]):
            break
        time.sleep(0.5)
    dep.stop("hospital_c")
    # Restarted at once (same key, same node id): its round-1 instruction died with the
    # process, so round 1 ends without it at the deadline; round 2 includes it again.
    dep.start_site("hospital_c", None, "--max-retries", "10")
    assert run.wait(timeout=540) == 0, dep.log("flwr-kill")[-3000:]
    metrics = runs / "kill" / "metrics.json"
    rounds = json.loads(metrics.read_text())["rounds"]
    ok = [{s for s, m in r["train"].items() if m.get("status") == 0} for r in rounds]
    assert [r["aggregation"]["applied"] for r in rounds] == [True, True]
    assert "hospital_c" not in ok[0] and {"hospital_a", "hospital_b"} <= ok[0]
    assert "hospital_c" in ok[1]


@pytest.mark.slow
def test_tls_auth_consortium_dp_and_secagg(tmp_path):
    torch.set_num_threads(1)
    sentinels: list[str] = []
    sites = _sites(tmp_path / "data", sentinels)
    cons = consortium_toml(tmp_path / "consortium.toml", sites)
    with Deployment(tmp_path / "dep", cons) as dep:
        assert dep.provision().returncode == 0
        dep.start_superlink()
        reg = dep.admin("register", "--kits", str(dep.kits))
        assert reg.returncode == 0, reg.stderr
        for name in sites:
            dep.start_site(name, None, "--max-retries", "10")

        # Intruders, each refused by a named component.
        unregistered = _intruder_kit(dep, "kit_unregistered", "hospital_a", tmp_path)
        pki.make_site_keys(unregistered / "supernode-key", unregistered / "supernode-key.pub", "x")  # fmt: skip
        other_ca = tmp_path / "other_ca"
        pki.make_ca(other_ca / "ca.pem", other_ca / "ca-key.pem", "other")
        wrong_ca = _intruder_kit(dep, "kit_wrong_ca", "hospital_b", tmp_path)
        shutil.copyfile(other_ca / "ca.pem", wrong_ca / "ca.pem")
        plain = _intruder_kit(dep, "kit_plain", "hospital_c", tmp_path)
        dep.start_site("unregistered", unregistered, "--max-retries", "1")
        dep.start_site("wrong_ca", wrong_ca, "--max-retries", "1")
        dep.start_site("plaintext", plain, "--insecure", "--max-retries", "1")
        codes = _wait_exit(dep, ["unregistered", "wrong_ca", "plaintext"])
        assert codes.keys() == {"unregistered", "wrong_ca", "plaintext"}
        assert all(c != 0 for c in codes.values())
        # the SuperLink's authentication refuses the unknown key
        assert "Failed to activate" in dep.log("unregistered") or "2004" in dep.log("unregistered")  # fmt: skip
        # the site's TLS check refuses a SuperLink certificate from another CA
        assert "CERTIFICATE_VERIFY_FAILED" in dep.log("wrong_ca") or "certificate verify failed" in dep.log("wrong_ca").lower()  # fmt: skip
        # the SuperLink's TLS endpoint refuses a plain-text client
        assert "305" in dep.log("plaintext") or "disconnected" in dep.log("plaintext").lower()  # fmt: skip

        runs = tmp_path / "runs"
        rc, out = dep.run(ROUNDS | {"output-dir": str(runs), "run-name": "plain", "node-wait-timeout": 90.0})  # fmt: skip
        assert rc == 0, out[-3000:]
        run_dir = runs / "plain"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [r["aggregation"]["applied"] for r in metrics["rounds"]] == [True, True]
        trained = {s for r in metrics["rounds"] for s in r["train"] if r["train"][s].get("status") == 0}  # fmt: skip
        assert trained == {"hospital_a", "hospital_b", "hospital_c"}
        final = torch.load(run_dir / "final_model.pt", weights_only=True)
        start = seeded_model("tiny", 0, "tiny-synthetic").state_dict()  # app default
        changed = [k for k in final if not torch.equal(final[k], start[k])]
        assert changed and all(
            k.startswith(("task_attention.", "heads.")) for k in changed
        )
        # every receipt matches the digest the site logged when it sent the reply
        receipts = {}
        for line in (run_dir / "receipts.jsonl").read_text().splitlines():
            rec = json.loads(line)
            receipts[(rec["round"], rec["site"])] = rec["sha256"]
        audits = {}
        for name in ("hospital_a", "hospital_b", "hospital_c"):
            audits |= _audit_replies(sites[name], run_dir)
        assert receipts and all(audits[key] == sha for key, sha in receipts.items())
        # the member that accepts only another app refused the run before loading it
        d_state = load_site_config(sites["hospital_d"]).state_dir
        refused = [json.loads(x) for x in (d_state / "audit.jsonl").read_text().splitlines()]  # fmt: skip
        assert refused and all(r["event"] == "refused" for r in refused)
        assert not (d_state / "privacy_ledger.json").exists()

        # A site killed mid-round: the round completes with the others, the site
        # rejoins after a restart and trains in the next round.
        dep.stop("hospital_d")
        _kill_mid_round(dep, sites, runs)

        # The same consortium with SecAgg+.
        rc, out = dep.run(ROUNDS | {"output-dir": str(runs), "run-name": "secagg", "secagg": True, "node-wait-timeout": 90.0})  # fmt: skip
        assert rc == 0, out[-3000:]
        sec = json.loads((runs / "secagg" / "metrics.json").read_text())
        assert [r["aggregation"]["applied"] for r in sec["rounds"]] == [True, True]
        sums = [json.loads(x) for x in (runs / "secagg" / "receipts.jsonl").read_text().splitlines()]  # fmt: skip
        assert [s["event"] for s in sums] == ["received-sum", "received-sum"]

        # Revocation: hospital_c's key is unregistered; its kit no longer gets in.
        kept_kit = _intruder_kit(dep, "kit_revoked", "hospital_c", tmp_path)
        dep.stop("hospital_c")
        assert dep.admin("revoke", "--kits", str(dep.kits), "--site", "hospital_c").returncode == 0  # fmt: skip
        assert dep.admin("register", "--kits", str(dep.kits)).returncode == 0
        dep.start_site("revoked", kept_kit, "--max-retries", "1")
        assert _wait_exit(dep, ["revoked"]).get("revoked", 0) != 0
        assert "Failed to activate" in dep.log("revoked") or "2004" in dep.log("revoked")  # fmt: skip

        # Leak search: nothing the server side wrote or received, nor the sites' audit
        # logs, holds a patient name, birth date, MRN, pseudonymous ID or private tag.
        server_side = [
            dep.root / "superlink-state", dep.logs / "superlink.log", runs,
            dep.logs / "flwr-run.log", dep.logs / "flwr-kill.log", dep.kits / "admin",
        ]  # fmt: skip
        audits = [load_site_config(sites[n]).state_dir / "audit.jsonl" for n in sites]
        searched, found = _leaks(server_side + audits, sentinels)
        print(f"leak search: {searched} bytes, {len(sentinels)} sentinels")
        assert searched > 100_000 and found == []
