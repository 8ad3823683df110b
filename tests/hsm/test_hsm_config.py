"""Token configuration (PIN sources, validation), the SoftHSM bootstrap helper, key references."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm import HsmError, TokenConfig
from hsm.bootstrap import SoftHsmToken, write_conf
from hsm.capabilities import resolve_montgomery
from hsm.kinds import ALL_KINDS, ED25519, der_octet_string, new_ref, parse_ref, public_key_from_ec_point
from hsm.mechanisms import MONTGOMERY_FORM


def test_pin_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PIN_VAR", "1234")
    assert TokenConfig("/m.so", "t", pin_env="TEST_PIN_VAR").read_pin() == "1234"
    pin_file = tmp_path / "pin"
    pin_file.write_text("5678\n")
    assert TokenConfig("/m.so", "t", pin_file=str(pin_file)).read_pin() == "5678"
    monkeypatch.delenv("TEST_PIN_VAR")
    with pytest.raises(HsmError, match="TEST_PIN_VAR"):
        TokenConfig("/m.so", "t", pin_env="TEST_PIN_VAR").read_pin()
    with pytest.raises(HsmError, match="cannot read"):
        TokenConfig("/m.so", "t", pin_file=str(tmp_path / "absent")).read_pin()


def test_config_validation() -> None:
    with pytest.raises(HsmError, match="exactly one"):
        TokenConfig("/m.so", "t")
    with pytest.raises(HsmError, match="exactly one"):
        TokenConfig("/m.so", "t", pin_env="A", pin_file="/b")
    with pytest.raises(HsmError):
        TokenConfig("/m.so", "t", pin_env="A", pool_size=0)
    with pytest.raises(HsmError):
        TokenConfig("/m.so", "t", pin_env="A", montgomery_keygen="maybe")  # type: ignore[arg-type]
    config = TokenConfig.from_mapping(
        {"module_path": "/m.so", "token_label": "t", "pin_env": "A", "pool_size": 2}
    )
    assert config.pool_size == 2
    with pytest.raises(HsmError, match="not the config text"):
        TokenConfig.from_mapping({"module_path": "/m.so", "token_label": "t", "pin": "1234"})
    with pytest.raises(HsmError, match="unknown keys"):
        TokenConfig.from_mapping(
            {"module_path": "/m.so", "token_label": "t", "pin_env": "A", "colour": "red"}
        )
    with pytest.raises(HsmError, match="pool_size"):
        TokenConfig.from_mapping(
            {"module_path": "/m.so", "token_label": "t", "pin_env": "A", "pool_size": "4"}
        )


def test_softhsm_conf_stays_in_its_directory(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    assert conf.read_text().splitlines() == [
        f"directories.tokendir = {tmp_path / 'tokens'}",
        "objectstore.backend = file",
        "log.level = ERROR",
        "slots.removable = false",
    ]
    assert (tmp_path / "tokens").is_dir()


def test_softhsm_conf_is_replaced_whole_and_only_when_it_changes(tmp_path: Path) -> None:
    """Processes sharing a token folder rewrite the file at start-up while others read it: an unchanged
    file keeps its inode (not rewritten), a stale one is swapped by a rename (a new inode, no truncation
    a reader could see), and no staging file is left behind."""
    conf = write_conf(tmp_path)
    inode = conf.stat().st_ino
    assert write_conf(tmp_path) == conf and conf.stat().st_ino == inode
    expected = conf.read_text()
    conf.write_text("directories.tokendir = /moved/elsewhere/tokens\n")
    stale = conf.stat().st_ino
    write_conf(tmp_path)
    assert conf.read_text() == expected and conf.stat().st_ino != stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["softhsm2.conf", "tokens"]


def test_session_token_is_private(softhsm: SoftHsmToken) -> None:
    assert softhsm.token_dir.is_relative_to(softhsm.directory)
    assert any(softhsm.token_dir.iterdir())  # the token lives here, not in /var/lib/softhsm


def test_montgomery_mode_resolution() -> None:
    listed = [0x1055, 0x1057, 0x1050]
    assert resolve_montgomery("auto", listed, "SoftHSM v2") == "edwards-oid"
    assert resolve_montgomery("auto", listed, "Luna K7") == "off"
    assert resolve_montgomery("auto", [*listed, int(MONTGOMERY_FORM.keygen)], "Any HSM") == "standard"
    assert resolve_montgomery("off", listed, "SoftHSM v2") == "off"


def test_key_references_describe_themselves() -> None:
    for kind in ALL_KINDS:
        for custody in ("pkcs11", "software"):
            ref = new_ref(kind, custody)
            assert parse_ref(ref) == (kind, custody)
    assert parse_ref(b"") is None and parse_ref(b"\x02" + bytes(18)) is None
    assert new_ref(ED25519, "pkcs11") != new_ref(ED25519, "pkcs11")


def test_ec_point_forms() -> None:
    point = b"\x04" + bytes(range(64))
    assert (
        public_key_from_ec_point(ALL_KINDS[2], der_octet_string(point)) == point
    )  # P-256, DER (short length)
    big = b"\x04" + bytes(132)
    assert der_octet_string(big)[:3] == b"\x04\x81\x85"
    assert public_key_from_ec_point(ALL_KINDS[4], der_octet_string(big)) == big  # P-521, DER (long length)
    assert public_key_from_ec_point(ED25519, bytes(32)) == bytes(32)  # raw accepted
    with pytest.raises(HsmError):
        public_key_from_ec_point(ED25519, bytes(33))
