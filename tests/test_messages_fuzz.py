"""Property tests: every wire decoder of RFC 9420 is strict and total over arbitrary input.

Random bytes and mutations of the real encodings in messages.json (bit flips, truncation, insertion,
deletion, overwriting) go to each decoder. Decoding must either raise an ``MLSError`` — nothing else may
escape — or return a value that re-encodes to exactly the input (one encoding per value). Replacing any
length prefix of a real encoding by the largest length (2^30 - 1) must fail fast without allocating.
"""

from __future__ import annotations

import functools
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import cipher_suite
from mls.errors import DecodeError, MLSError, ValidationError
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import RatchetTreeExtension, decode_ratchet_tree, encode_ratchet_tree
from mls.wire.codec import Reader
from mls.wire.commit import Commit
from mls.wire.extensions import (
    Extension,
    ExtensionType,
    ExternalPub,
    check_unique_extension_types,
    find_extension,
    find_payload,
)
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    MLSMessage,
    PrivateMessageContent,
    PublicMessage,
    WireFormat,
    framed_content_tbs,
)
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import KeyPackage
from mls.wire.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalBody,
    ReInit,
    Remove,
    Update,
)
from mls.wire.struct import Struct
from mls.wire.welcome import GroupSecrets, PathSecret, Welcome

from .vectors import load

HUGE_LENGTH = bytes.fromhex("bfffffff")  # varint 2^30 - 1


@dataclass(frozen=True)
class Decoder:
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]


def struct_decoder(cls: type[Struct]) -> Decoder:
    return Decoder(cls.from_bytes, lambda v: v.to_bytes())


def content_decoder(content_type: ContentType) -> Decoder:
    return Decoder(lambda b: PrivateMessageContent.from_bytes(b, content_type), lambda v: v.to_bytes())


DECODERS: dict[str, Decoder] = {
    **{
        cls.__name__: struct_decoder(cls)
        for cls in (
            MLSMessage,
            KeyPackage,
            Welcome,
            GroupInfo,
            GroupSecrets,
            Commit,
            Proposal,
            RatchetTreeExtension,
            LeafNode,
            Credential,
            Extension,
        )
    },
    **{f"PrivateMessageContent[{t.name}]": content_decoder(t) for t in ContentType},
}

_BODIES: dict[str, type[ProposalBody]] = {
    "add_proposal": Add,
    "update_proposal": Update,
    "remove_proposal": Remove,
    "pre_shared_key_proposal": PreSharedKey,
    "re_init_proposal": ReInit,
    "external_init_proposal": ExternalInit,
    "group_context_extensions_proposal": GroupContextExtensions,
}
_MESSAGES = (
    "mls_welcome",
    "mls_group_info",
    "mls_key_package",
    "public_message_application",
    "public_message_proposal",
    "public_message_commit",
    "private_message",
)


def _private_content(message: PublicMessage, padding: int) -> bytes:
    """The PrivateMessageContent plaintext that would carry ``message``'s content and auth data."""
    content = message.content
    return PrivateMessageContent(
        content_type=content.content_type,
        application_data=content.application_data,
        proposal=content.proposal,
        commit=content.commit,
        auth=message.auth,
        length_of_padding=padding,
    ).to_bytes()


def _leaf_nodes(case: dict[str, str]) -> list[LeafNode]:
    """Leaf nodes of every source: the tree's, the key package's, an update's and a commit path's."""
    tree = RatchetTreeExtension.from_bytes(bytes.fromhex(case["ratchet_tree"])).nodes
    key_package = MLSMessage.from_bytes(bytes.fromhex(case["mls_key_package"])).key_package
    path = Commit.from_bytes(bytes.fromhex(case["commit"])).path
    assert key_package is not None
    return [
        *(n.leaf_node for n in tree if n is not None and n.leaf_node is not None),
        key_package.leaf_node,
        Update.from_bytes(bytes.fromhex(case["update_proposal"])).leaf_node,
        *([] if path is None else [path.leaf_node]),
    ]


def _case_values(case: dict[str, str]) -> Iterator[tuple[str, bytes]]:
    """(decoder name, encoding) pairs drawn from one messages.json case."""
    messages = [MLSMessage.from_bytes(bytes.fromhex(case[k])) for k in _MESSAGES]
    yield from (("MLSMessage", m.to_bytes()) for m in messages)
    yield from ((type(m.body).__name__, m.body.to_bytes()) for m in messages)  # Welcome, GroupInfo, …
    for key, cls in _BODIES.items():
        yield "Proposal", Proposal.of(cls.from_bytes(bytes.fromhex(case[key]))).to_bytes()
    yield "GroupSecrets", bytes.fromhex(case["group_secrets"])
    yield "Commit", bytes.fromhex(case["commit"])
    yield "RatchetTreeExtension", bytes.fromhex(case["ratchet_tree"])
    leaves = _leaf_nodes(case)
    yield from (("LeafNode", leaf.to_bytes()) for leaf in leaves)
    yield from (("Credential", leaf.credential.to_bytes()) for leaf in leaves)
    yield from (("Extension", e.to_bytes()) for leaf in leaves for e in leaf.extensions)
    for i, m in enumerate(messages):
        if m.public_message is not None:
            content = m.public_message.content
            name = f"PrivateMessageContent[{ContentType(content.content_type).name}]"
            yield name, _private_content(m.public_message, padding=i)


@functools.cache
def seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {name: [] for name in DECODERS}
    for case in load("messages")[:40]:
        for name, data in _case_values(case):
            if name in out:
                out[name].append(data)
    out["Extension"] += [Extension(t, b"\x01" * (t % 9)).to_bytes() for t in (*ExtensionType, 0x0A0A)]
    return out


def check_strict(name: str, data: bytes) -> None:
    """Decoding fails with an MLSError, or the value re-encodes to exactly ``data``."""
    decoder = DECODERS[name]
    try:
        value = decoder.decode(data)
    except MLSError:
        return
    assert decoder.encode(value) == data


def test_every_decoder_has_seeds() -> None:
    assert all(seeds()[name] for name in DECODERS), {n: len(s) for n, s in seeds().items()}


@pytest.mark.parametrize("name", DECODERS)
def test_seeds_round_trip(name: str) -> None:
    decoder = DECODERS[name]
    for data in seeds()[name]:
        assert decoder.encode(decoder.decode(data)) == data


@pytest.mark.parametrize("name", DECODERS)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes(name: str, data: bytes) -> None:
    check_strict(name, data)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x3F, 0x40, 0x80, 0xBF, 0xC0, 0xFF]))
    return bytes(data)


@pytest.mark.parametrize("name", DECODERS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_vectors(name: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds()[name]), label="seed")
    check_strict(name, data.draw(mutated(seed), label="mutated"))


def length_prefixes(
    decode: Callable[[bytes], Any], data: bytes, monkeypatch: pytest.MonkeyPatch
) -> list[slice]:
    """Where ``decode`` reads a variable-length integer (always a length prefix) in ``data``."""
    spans: list[slice] = []
    varint = Reader.varint

    def recording(r: Reader) -> int:
        start = r.pos
        value = varint(r)
        spans.append(slice(start, r.pos))
        return value

    with monkeypatch.context() as m:
        m.setattr(Reader, "varint", recording)
        decode(data)
    return spans


@pytest.mark.parametrize("name", DECODERS)
def test_huge_claimed_length_fails_fast_without_allocating(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = DECODERS[name]
    seed = max(seeds()[name], key=len)
    spans = length_prefixes(decoder.decode, seed, monkeypatch)
    assert spans
    tracemalloc.start()
    try:
        start = time.perf_counter()
        for span in spans:
            data = seed[: span.start] + HUGE_LENGTH + seed[span.stop :]
            with pytest.raises(MLSError):
                decoder.decode(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024 + 64 * len(seed)
    assert elapsed < 0.02 * len(spans) + 1


# -- targeted rules ---------------------------------------------------------------------------------


def _first(key: str) -> bytes:
    return bytes.fromhex(load("messages")[0][key])


@pytest.mark.parametrize(
    ("cls", "encoding", "structure", "reason"),
    [
        (MLSMessage, "0002 0003", "MLSMessage.version", "not one of"),
        (MLSMessage, "0001 0006", "MLSMessage.wire_format", "unknown wire_format 6"),
        (MLSMessage, "0001 0000", "MLSMessage.wire_format", "unknown wire_format 0"),
        (Credential, "0003 00", "Credential.credential_type", "unknown credential_type 3"),
        (Credential, "0a0a 00", "Credential.credential_type", "unknown credential_type 2570"),
        (Proposal, "0008 00", "Proposal.proposal_type", "unknown proposal_type 8"),
        (PreSharedKey, "02 04 00 00 0000000000000000 00", "PreSharedKeyID.usage", "not one of"),
        (RatchetTreeExtension, "00", "RatchetTreeExtension", "non-blank"),
        (RatchetTreeExtension, "02 00 00", "RatchetTreeExtension", "non-blank"),
    ],
)
def test_unparseable_values_are_decode_errors(
    cls: type[Struct], encoding: str, structure: str, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason) as e:
        cls.from_bytes(bytes.fromhex(encoding))
    assert structure in e.value.structure


def test_ratchet_tree_encoding_drops_trailing_blanks() -> None:
    nodes = decode_ratchet_tree(_first("ratchet_tree"))
    assert encode_ratchet_tree([*nodes, None, None]) == _first("ratchet_tree")


def test_private_message_content_padding_must_be_zero() -> None:
    message = MLSMessage.from_bytes(_first("public_message_application")).public_message
    assert message is not None
    plain = _private_content(message, padding=0)
    decoded = PrivateMessageContent.from_bytes(plain + bytes(7), ContentType.application)
    assert decoded.length_of_padding == 7
    with pytest.raises(DecodeError, match="padding") as e:
        PrivateMessageContent.from_bytes(plain + bytes(3) + b"\x01" + bytes(3), ContentType.application)
    assert e.value.offset == len(plain) + 3


def test_extension_lists_must_not_repeat_a_type() -> None:
    pub = ExternalPub(b"key").to_extension()
    check_unique_extension_types([pub, Extension(0x0A0A, b"")])
    assert find_payload([Extension(0x0A0A, b""), pub], ExternalPub) == ExternalPub(b"key")
    assert find_extension([pub], ExtensionType.ratchet_tree) is None
    with pytest.raises(ValidationError) as e:
        check_unique_extension_types([pub, Extension(0x0A0A, b""), pub])
    assert e.value.rule == "13.4/extension-type-unique"


def test_secrets_stay_out_of_repr() -> None:
    secrets = GroupSecrets(b"joiner-secret-bytes", PathSecret(b"path-secret-bytes"), ())
    assert "secret-bytes" not in repr(secrets)
    assert "secret-bytes" not in repr(PathSecret(b"path-secret-bytes"))


def test_optional_parts_must_match_their_selectors() -> None:
    message = MLSMessage.from_bytes(_first("public_message_commit")).public_message
    assert message is not None and message.auth.confirmation_tag is not None
    with pytest.raises(ValueError, match="membership_tag"):
        PublicMessage(message.content, message.auth, None)
    with pytest.raises(ValueError, match="confirmation_tag"):
        message.auth.to_bytes(ContentType.proposal)
    with pytest.raises(ValueError, match="GroupContext"):
        framed_content_tbs(WireFormat.mls_public_message, message.content, None)


def test_wrappers_round_trip() -> None:
    key_package = MLSMessage.from_bytes(_first("mls_key_package")).body
    assert MLSMessage.of(key_package).to_bytes() == _first("mls_key_package")
    remove = Remove.from_bytes(_first("remove_proposal"))
    assert Proposal.of(remove).body == remove


# -- to-be-signed encodings, checked against signatures and MACs in the vectors ----------------------


def test_key_package_and_leaf_node_tbs_verify() -> None:
    for case in load("messages")[:10]:
        kp = MLSMessage.from_bytes(bytes.fromhex(case["mls_key_package"])).key_package
        assert kp is not None
        cs = cipher_suite(kp.cipher_suite)
        key = kp.leaf_node.signature_key
        assert cs.verify_with_label(key, "KeyPackageTBS", kp.tbs(), kp.signature)
        assert cs.verify_with_label(key, "LeafNodeTBS", kp.leaf_node.tbs(), kp.leaf_node.signature)
        with pytest.raises(ValueError):
            kp.leaf_node.tbs(b"group", 0)


def test_group_info_tbs_verifies() -> None:
    case = load("messages")[0]
    info = MLSMessage.from_bytes(bytes.fromhex(case["mls_group_info"])).group_info
    tree = decode_ratchet_tree(bytes.fromhex(case["ratchet_tree"]))
    assert info is not None
    signer = tree[2 * info.signer]
    assert signer is not None and signer.leaf_node is not None
    cs = cipher_suite(info.group_context.cipher_suite)
    assert cs.verify_with_label(signer.leaf_node.signature_key, "GroupInfoTBS", info.tbs(), info.signature)


@pytest.mark.parametrize("case", load("message-protection"), ids=lambda c: f"suite {c['cipher_suite']}")
def test_framed_content_tbs_and_tbm_verify(case: dict[str, Any]) -> None:
    h = bytes.fromhex
    cs = cipher_suite(case["cipher_suite"])
    context = GroupContext(
        1,
        case["cipher_suite"],
        h(case["group_id"]),
        case["epoch"],
        h(case["tree_hash"]),
        h(case["confirmed_transcript_hash"]),
        (),
    )
    for key in ("proposal_pub", "commit_pub"):
        message = MLSMessage.from_bytes(h(case[key]))
        public = message.public_message
        assert public is not None
        content = AuthenticatedContent(message.wire_format, public.content, public.auth)
        assert cs.verify_with_label(
            h(case["signature_pub"]), "FramedContentTBS", content.tbs(context), public.auth.signature
        )
        assert cs.mac(h(case["membership_key"]), content.tbm(context)) == public.membership_tag
