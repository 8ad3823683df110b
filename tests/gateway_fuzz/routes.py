"""What every route of gateway.api.ROUTES takes, and Hypothesis strategies for requests it must refuse.

Each route has a :class:`Spec`: its path parameters (named symbolically, resolved against the seeded
:class:`~.harness.World`) and, for routes that read a JSON body, one or more :class:`Variant` s — a
*valid* base body and the typed description of its fields (:class:`F`). The strategies here turn a base
body into one that is certainly refused, by replacing one to three fields with a defective value:

* **parse-level** defects (wrong JSON type, bad base64, out-of-range or huge integer, missing required
  field, empty or over-long text or list, bad nested object): the handler refuses these before any work,
  so the answer must be ``400 invalid_request``;
* **semantic** defects in MLS fields (random bytes, a real message bit-flipped, truncated or extended, a
  real message of the wrong kind, a stale or consumed one; a Remove of a blank leaf): any 4xx problem.

At least one defect of a request is *guaranteed* to be refused; a defect that only may be (random bytes
as a ratchet tree) is only ever added to one that is. Unknown fields may be mixed in.

The world's real messages (see :func:`.harness.seed`) are the mutation sources.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.gateway.cert_authority import Authority, pem

from .harness import World, b64, b64url

MISSING: Any = object()  # a defect that removes the field

# ---- field descriptions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    """One JSON field. ``example`` is a valid value: a constant, or ``"@name"`` for b64 of a world message."""

    name: str
    kind: str  # text | int | bool | choice | b64 | list | object
    example: Any = None
    required: bool = False
    null_ok: bool = False  # null counts as absent (no defect)
    lo: int = 0
    hi: int = 0
    max_len: int = 256  # text
    options: tuple[str, ...] = ()  # choice
    mls: str | None = None  # b64 of an MLS structure of this kind (see MLS_SOURCES)
    mls_guaranteed: bool = True  # any mutation of it is certainly refused
    non_empty: bool = False  # b64 that must not decode to nothing; list that must not be empty
    max_bytes: int | None = None  # b64 whose decoded length is bounded
    semantic_ints: tuple[int, ...] = ()  # in-range integers certainly refused (a Remove of a blank leaf)
    item: F | None = None  # list items
    fields: tuple[F, ...] = ()  # object fields
    bad_items: tuple[Any, ...] = ()  # extra parse-level defective list items


@dataclass(frozen=True)
class Variant:
    name: str
    base: Callable[[World], dict[str, Any]]
    fields: tuple[F, ...]


@dataclass(frozen=True)
class Spec:
    """A route: symbolic path parameters (see :func:`param_value`) and body variants (empty: no body read)."""

    params: dict[str, str] = field(default_factory=dict)
    variants: tuple[Variant, ...] = ()
    idempotent: bool = False  # honours Idempotency-Key (validates it)
    service: bool = False  # no input, no auth: /healthz and friends


def param_value(world: World, symbol: str) -> str:
    return {
        "tenant": world.tenant_id,
        "spare_token": world.spare_token_id,
        "alice": world.alice,
        "bob": world.bob,
        "gid": b64url(world.gid),
        "gid2": b64url(world.gid2),
        "gid3": b64url(world.gid3),
        "client": world.client,
    }[symbol]


def _resolve(value: Any, world: World) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return b64(world.messages[value[1:]])
    if isinstance(value, list):
        return [_resolve(v, world) for v in value]
    return value


def example(f: F, world: World) -> Any:
    if f.kind == "object" and f.example is None:
        return {sub.name: example(sub, world) for sub in f.fields if sub.required or sub.example is not None}
    if f.kind == "list" and f.example is None:
        return []
    return _resolve(f.example, world)


def _base(*fields: F) -> Callable[[World], dict[str, Any]]:
    """A base body of the fields' examples (fields without one are left out)."""
    return lambda world: {f.name: example(f, world) for f in fields if f.example is not None or f.required}


def _v(name: str, *fields: F, extra: dict[str, Any] | None = None) -> Variant:
    make = _base(*fields)
    return Variant(name, (lambda w: {**make(w), **(extra or {})}) if extra else make, fields)


#: A PEM certificate for bodies that carry one (its key is nobody's: a credential taken from it is refused).
FUZZ_CERTIFICATE = pem(Authority.root("fuzz").cert)

# Reusable field shapes.
U32 = 2**32 - 1
_CENTURY_S = 100 * 365 * 24 * 3600  # the longest retention (gateway.retention)
CREDENTIAL_FIELDS = (
    F("type", "choice", "basic", required=True, options=("basic",)),
    F("identity", "b64", b64(b"carol"), required=True, non_empty=True),
)
EXTENSION = F(
    "extension",
    "object",
    fields=(
        F("type", "int", 0xFF00, required=True, lo=0, hi=0xFFFF),
        F("data", "b64", b64(b"ext"), required=True),
    ),
)
EXTENSIONS = F("extensions", "list", item=EXTENSION)
EXTERNAL_SENDER = F(
    "external_sender",
    "object",
    fields=(
        F("signature_key", "b64", b64(bytes(32)), required=True),
        F("credential", "object", required=True, fields=CREDENTIAL_FIELDS),
    ),
)
JOIN_PSK = F(
    "psk",
    "object",
    fields=(
        F("psk_id", "b64", b64(b"psk"), required=True),
        F("secret", "b64", b64(bytes(32)), required=True),
    ),
)
COMMIT_PSK = F(
    "psk",
    "object",
    fields=(F("psk_id", "b64", b64(b"psk"), required=True), F("secret", "b64", b64(bytes(32)), null_ok=True)),
    # the resumption form {resumption: {group_id, epoch}}, broken
    bad_items=(
        {"resumption": 1},
        {"resumption": []},
        {"resumption": {"epoch": 0}},
        {"resumption": {"group_id": "*", "epoch": 0}},
        {"resumption": {"group_id": "AAAA", "epoch": -1}},
        {"resumption": {"group_id": "AAAA", "epoch": 2**63}},
        {"resumption": {"group_id": "AAAA", "epoch": "1"}},
        {"resumption": {"group_id": "AAAA"}},
    ),
)
HANDSHAKE = F("handshake", "choice", "public", options=("public", "private"))
RATCHET_TREE = F("ratchet_tree", "b64", null_ok=True, mls="ratchet_tree", mls_guaranteed=False)

_G = "/v1/identities/{identity_id}/groups"
_ALICE_G = {"identity_id": "alice", "gid": "gid"}

SPECS: dict[str, Spec] = {
    "GET /healthz": Spec(service=True),
    "GET /readyz": Spec(service=True),
    "GET /metrics": Spec(service=True),
    "GET /v1/openapi.json": Spec(service=True),
    "POST /v1/tenants": Spec(
        idempotent=True, variants=(_v("tenant", F("name", "text", "fuzz tenant", required=True)),)
    ),
    "GET /v1/tenants": Spec(),
    "POST /v1/tenants/{tenant_id}/tokens": Spec({"tenant_id": "tenant"}, (_v("token"),), idempotent=True),
    "DELETE /v1/tenants/{tenant_id}/tokens/{token_id}": Spec(
        {"tenant_id": "tenant", "token_id": "spare_token"}
    ),
    "GET /v1/tenants/{tenant_id}/tokens": Spec({"tenant_id": "tenant"}),
    "DELETE /v1/tenants/{tenant_id}": Spec({"tenant_id": "tenant"}),
    "POST /v1/identities": Spec(
        idempotent=True,
        variants=(
            _v(
                "identity",
                F("name", "text", "carol", required=True),
                F("cipher_suite", "int", 1, lo=1, hi=7),
                F(
                    "credential",
                    "object",
                    null_ok=True,
                    fields=CREDENTIAL_FIELDS,
                    example={"type": "basic", "identity": b64(b"carol")},
                ),
            ),
        ),
    ),
    "GET /v1/identities": Spec(),
    "GET /v1/identities/{identity_id}": Spec({"identity_id": "alice"}),
    "DELETE /v1/identities/{identity_id}": Spec({"identity_id": "alice"}),
    "POST /v1/identities/{identity_id}/key-packages": Spec(
        {"identity_id": "alice"},
        idempotent=True,
        variants=(
            _v(
                "key-packages",
                F("count", "int", 1, lo=1, hi=100),
                F("last_resort", "bool", False),
                F("lifetime_days", "int", 30, lo=1, hi=90),
            ),
        ),
    ),
    "GET /v1/identities/{identity_id}/key-packages": Spec({"identity_id": "alice"}),
    f"POST {_G}": Spec(
        {"identity_id": "alice"},
        idempotent=True,
        variants=(
            _v(
                "group",
                F("group_id", "b64", b64(b"a fuzz group"), null_ok=True, non_empty=True, max_bytes=255),
                EXTENSIONS,
                F("external_senders", "list", item=EXTERNAL_SENDER),
            ),
        ),
    ),
    f"GET {_G}": Spec({"identity_id": "alice"}),
    f"POST {_G}/join": Spec(
        {"identity_id": "bob"},
        idempotent=True,
        variants=(
            _v(
                "join",
                F("welcome", "b64", "@welcome", required=True, mls="welcome"),
                RATCHET_TREE,
                F("psks", "list", item=JOIN_PSK),
            ),
        ),
    ),
    f"POST {_G}/external-join": Spec(
        {"identity_id": "bob"},
        idempotent=True,
        variants=(
            _v(
                "external-join",
                F("group_info", "b64", "@group_info3", required=True, mls="group_info"),
                F(
                    "ratchet_tree",
                    "b64",
                    "@ratchet_tree3",
                    null_ok=True,
                    mls="ratchet_tree",
                    mls_guaranteed=False,
                ),
                F("remove_prior", "bool", False),
                F("remove_prior_leaf", "int", null_ok=True, lo=0, hi=U32),
                F("psks", "list", item=JOIN_PSK),
            ),
        ),
    ),
    f"GET {_G}/{{gid}}": Spec(_ALICE_G),
    f"DELETE {_G}/{{gid}}": Spec(_ALICE_G),
    f"POST {_G}/{{gid}}/commits": Spec(
        _ALICE_G,
        idempotent=True,
        variants=(
            _v(
                "commit",
                F(
                    "add",
                    "list",
                    item=F("key_package", "b64", "@key_package", required=True, mls="key_package"),
                ),
                F(
                    "remove",
                    "list",
                    item=F(
                        "leaf", "int", 1, required=True, lo=0, hi=U32, semantic_ints=(0, 2, 3, 7, 1000, U32)
                    ),
                ),
                F("update", "bool", False),
                F("psks", "list", item=COMMIT_PSK),
                F("group_context_extensions", "list", null_ok=True, item=EXTENSION),
                F("include_pending", "bool", False),
                F("force_path", "bool", False),
                HANDSHAKE,
                F("pending", "bool", False),
            ),
        ),
    ),
    f"POST {_G}/{{gid}}/pending-commit/merge": Spec(_ALICE_G, (_v("merge"),), idempotent=True),
    f"DELETE {_G}/{{gid}}/pending-commit": Spec(_ALICE_G),
    f"POST {_G}/{{gid}}/proposals": Spec(
        _ALICE_G,
        idempotent=True,
        variants=(
            _v(
                "add",
                F("type", "choice", "add", required=True, options=("add",)),
                F("key_package", "b64", "@key_package", required=True, mls="key_package"),
                HANDSHAKE,
            ),
            _v(
                "remove",
                F("type", "choice", "remove", required=True, options=("remove",)),
                F("leaf_index", "int", 1, required=True, lo=0, hi=U32, semantic_ints=(2, 3, 1000, U32)),
                HANDSHAKE,
            ),
            _v(
                "psk",
                F("type", "choice", "psk", required=True, options=("psk",)),
                F(
                    "psk",
                    "object",
                    required=True,
                    fields=(
                        F("psk_id", "b64", b64(b"fuzz psk"), required=True),
                        F("secret", "b64", b64(bytes(32)), null_ok=True),
                    ),
                ),
                HANDSHAKE,
            ),
            _v(
                "group_context_extensions",
                F(
                    "type",
                    "choice",
                    "group_context_extensions",
                    required=True,
                    options=("group_context_extensions",),
                ),
                EXTENSIONS,
                HANDSHAKE,
            ),
            _v("update", F("type", "choice", "update", required=True, options=("update",)), HANDSHAKE),
        ),
    ),
    f"POST {_G}/{{gid}}/messages": Spec(
        _ALICE_G,
        idempotent=True,
        variants=(
            _v(
                "single",
                F("data", "b64", b64(b"hello"), required=True),
                F("authenticated_data", "b64", b64(b"ad"), null_ok=True),
            ),
            _v(
                "batch",
                F(
                    "messages",
                    "list",
                    required=True,
                    non_empty=True,
                    item=F(
                        "message",
                        "object",
                        fields=(
                            F("data", "b64", b64(b"hello"), required=True),
                            F("authenticated_data", "b64", null_ok=True),
                        ),
                    ),
                    example=[{"data": b64(b"hello")}],
                ),
            ),
        ),
    ),
    f"POST {_G}/{{gid}}/process": Spec(
        {"identity_id": "bob", "gid": "gid"},
        idempotent=True,
        variants=(
            _v("single", F("message", "b64", "@application", required=True, mls="message")),
            # Batch items are checked one by one (a bad message is a problem item of a 200 answer): here only
            # the request's own shape is fuzzed; test_mls_mutations covers the items.
            _v(
                "batch",
                F(
                    "messages",
                    "list",
                    ["@application"],
                    required=True,
                    non_empty=True,
                    item=F("message", "b64", "@application", required=True),
                ),
            ),
        ),
    ),
    f"GET {_G}/{{gid}}/group-info": Spec(_ALICE_G),
    f"POST {_G}/{{gid}}/export": Spec(
        _ALICE_G,
        variants=(
            _v(
                "export",
                F("label", "text", "fuzz label", required=True, max_len=255),
                F("context", "b64", b64(b"context"), null_ok=True),
                F("length", "int", 16, required=True, lo=1, hi=255),
            ),
        ),
    ),
    # ---- the group service (api-delivery.md) ----
    "POST /v1/clients": Spec(
        idempotent=True, variants=(_v("client", F("name", "text", "fuzz tablet", required=True)),)
    ),
    "GET /v1/clients": Spec(),
    "GET /v1/clients/{client_id}": Spec({"client_id": "client"}),
    "DELETE /v1/clients/{client_id}": Spec({"client_id": "client"}),
    "POST /v1/clients/{client_id}/key-packages": Spec(
        {"client_id": "client"},
        idempotent=True,
        variants=(
            _v(
                "upload",
                F(
                    "key_packages",
                    "list",
                    ["@device_key_package"],
                    required=True,
                    item=F("key_package", "b64", "@device_key_package", required=True, mls="key_package"),
                ),
                F("last_resort", "b64", null_ok=True, mls="key_package"),
            ),
        ),
    ),
    "GET /v1/clients/{client_id}/key-packages": Spec({"client_id": "client"}),
    # Claiming hands a KeyPackage out: the base body would succeed, and only parse-level defects (all
    # certainly refused) are made for it.
    "POST /v1/key-packages/claim": Spec(
        idempotent=True,
        variants=(
            Variant(
                "claim",
                lambda w: {"endpoints": [w.client], "cipher_suite": 1},
                (
                    F(
                        "endpoints",
                        "list",
                        required=True,
                        non_empty=True,
                        item=F("endpoint", "text", required=True, max_len=64),
                    ),
                    F("cipher_suite", "int", 1, null_ok=True, lo=1, hi=0xFFFF),
                ),
            ),
        ),
    ),
    "POST /v1/groups/{gid}/commit-bundles": Spec(
        {"gid": "gid"},
        idempotent=True,
        variants=(
            _v(
                "bundle",
                F("commit", "b64", "@commit", required=True, mls="message"),
                F("group_info", "b64", "@bundle_group_info", required=True, mls="group_info"),
                F("ratchet_tree", "b64", null_ok=True, mls="ratchet_tree", mls_guaranteed=False),
                # the log cannot read a Welcome: a mutated one may pass
                F("welcome", "b64", null_ok=True, mls="welcome", mls_guaranteed=False),
            ),
        ),
    ),
    # The log relays private messages it cannot read: a bit flip in one's ciphertext may pass, so MLS
    # mutations are never the certain defect here (test_log_refuses_undecodable_messages covers those).
    "POST /v1/groups/{gid}/messages": Spec(
        {"gid": "gid"},
        idempotent=True,
        variants=(
            _v(
                "message",
                F("message", "b64", "@application", required=True, mls="message", mls_guaranteed=False),
            ),
        ),
    ),
    "GET /v1/groups/{gid}": Spec({"gid": "gid"}),
    "GET /v1/groups/{gid}/group-info": Spec({"gid": "gid"}),
    "PUT /v1/identities/{identity_id}/webhook": Spec(
        {"identity_id": "alice"},
        (
            _v(
                "webhook",
                F("url", "text", "https://93.184.216.34/hook", required=True, max_len=2048),
                F("secret", "text", "fuzz-webhook-secret-0123456789", required=True),
                F("after", "text", "0", null_ok=True, max_len=18),
            ),
        ),
    ),
    "GET /v1/identities/{identity_id}/webhook": Spec({"identity_id": "alice"}),
    "GET /v1/tenants/{tenant_id}/retention": Spec({"tenant_id": "tenant"}),
    "PUT /v1/tenants/{tenant_id}/retention": Spec(
        {"tenant_id": "tenant"},
        (
            _v(
                "retention",
                F("mailbox_s", "int", 604800, null_ok=True, lo=1, hi=_CENTURY_S),
                F("idempotency_s", "int", 86400, null_ok=True, lo=86400, hi=_CENTURY_S),
                F("audit_s", "int", 31536000, null_ok=True, lo=1, hi=_CENTURY_S),
            ),
        ),
    ),
    "PUT /v1/tenants/{tenant_id}/legal-hold": Spec(
        {"tenant_id": "tenant"}, (_v("hold", F("enabled", "bool", False, required=True)),)
    ),
    "DELETE /v1/identities/{identity_id}/webhook": Spec({"identity_id": "alice"}),
    "GET /v1/clients/{client_id}/mailbox": Spec({"client_id": "client"}),
    "GET /v1/clients/{client_id}/mailbox/ws": Spec({"client_id": "client"}),
    "POST /v1/clients/{client_id}/mailbox/ack": Spec(
        {"client_id": "client"},
        (_v("ack", F("up_to", "text", "1", required=True, max_len=20)),),
        idempotent=True,
    ),
    "GET /v1/identities/{identity_id}/inbox": Spec({"identity_id": "alice"}),
    "GET /v1/identities/{identity_id}/inbox/ws": Spec({"identity_id": "alice"}),
    "POST /v1/identities/{identity_id}/inbox/ack": Spec(
        {"identity_id": "alice"},
        (_v("ack", F("up_to", "text", "1", required=True, max_len=20)),),
        idempotent=True,
    ),
    # credential policies and X.509 credentials (issue 16)
    "PUT /v1/tenants/{tenant_id}/credential-policy": Spec(
        {"tenant_id": "tenant"},
        (
            _v(
                "basic only",
                F(
                    "allowed_types",
                    "list",
                    ["basic"],
                    required=True,
                    non_empty=True,
                    item=F("type", "choice", "basic", required=True, options=("basic", "x509")),
                ),
            ),
        ),
    ),
    "GET /v1/tenants/{tenant_id}/credential-policy": Spec({"tenant_id": "tenant"}),
    "DELETE /v1/tenants/{tenant_id}/credential-policy": Spec({"tenant_id": "tenant"}),
    "POST /v1/identities/{identity_id}/csr": Spec(
        {"identity_id": "alice"},
        (_v("subject", F("subject", "text", "CN=fuzz", required=True, max_len=1024)),),
    ),
    "PUT /v1/identities/{identity_id}/credential": Spec(
        {"identity_id": "alice"},
        (
            _v(
                "chain",
                F(
                    "x509_chain",
                    "list",
                    [FUZZ_CERTIFICATE],
                    required=True,
                    non_empty=True,
                    item=F("certificate", "text", FUZZ_CERTIFICATE, required=True, max_len=65536),
                ),
            ),
        ),
    ),
}

#: Fields that switch a handler into another mode: never added as "unknown" fields.
_MODE_FIELDS = {"messages", "message", "resumption", "remove_prior_leaf"}


def known_field_names(spec: Spec) -> set[str]:
    return {f.name for v in spec.variants for f in v.fields} | _MODE_FIELDS


# ---- values ------------------------------------------------------------------------------------------------

#: Any text, lone surrogates included (the gateway refuses those with 400).
TEXT = st.text(max_size=12)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)

_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "b64": (str,),
    "list": (list,),
    "object": (dict,),
    "choice": (str,),
}


def wrong_type(f: F) -> st.SearchStrategy[Any]:
    """A JSON value of another type than the field's (null only where null is not "absent")."""

    def wrong(v: Any) -> bool:
        if v is None:
            return not f.null_ok
        if f.kind == "int":
            return isinstance(v, bool) or not isinstance(v, int)
        if f.kind == "bool":
            return not isinstance(v, bool)
        if f.kind == "choice":
            return v not in f.options
        return not isinstance(v, _TYPES[f.kind])

    return JSON_VALUES.filter(wrong)


def is_bad_b64(value: str) -> bool:
    """Not standard base64 with padding (RFC 4648 §4) — what the contract requires."""
    try:
        base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return True
    return False


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
BAD_B64 = st.one_of(
    st.text(st.sampled_from(_B64_ALPHABET + "=-_ .*!\n\té€"), min_size=1, max_size=24),
    st.binary(min_size=1, max_size=24).map(lambda b: b64(b).rstrip("=")),  # padding dropped
    st.binary(min_size=1, max_size=24).map(lambda b: base64.urlsafe_b64encode(b).decode()),  # base64url
    st.binary(min_size=1, max_size=24).map(lambda b: b64(b) + "="),
    st.binary(min_size=3, max_size=24).map(lambda b: " " + b64(b)),
).filter(is_bad_b64)


def _out_of_range(f: F) -> st.SearchStrategy[Any]:
    huge = st.sampled_from([2**31, 2**32, 2**63, 2**64, 2**128, -(2**63) - 1, 10**100, -(10**100), 10**4000])
    return st.one_of(st.integers(max_value=f.lo - 1), st.integers(min_value=f.hi + 1), huge).filter(
        lambda v: not f.lo <= v <= f.hi
    )


# ---- MLS mutations -----------------------------------------------------------------------------------------

#: Real messages that may be mutated into each kind of MLS field, and whole real messages of other kinds (or
#: stale or consumed ones) that the field must refuse as they are.
MLS_SOURCES: dict[str, tuple[str, ...]] = {
    "message": (
        "application",
        "commit",
        "commit_private",
        "proposal",
        "application_bob",
        "application_seen",
        "commit_epoch0",
    ),
    "welcome": ("welcome", "welcome_stale"),
    "key_package": ("key_package", "key_package_bob"),
    "group_info": ("group_info3", "group_info"),
    "ratchet_tree": ("ratchet_tree3", "ratchet_tree"),
}
MLS_REFUSED_AS_IS: dict[str, tuple[str, ...]] = {
    # For bob on G: stale (epoch 0), replayed (generation used), his own message, non-framed kinds.
    # (``application_seen`` is not refused: it went through the group's log, so a repeated delivery answers
    # the event it produced.)
    "message": (
        "commit_epoch0",
        "application_bob",
        "welcome",
        "welcome_stale",
        "key_package",
        "key_package_bob",
        "group_info",
    ),
    # Not a Welcome at all (bob's own used one, which went through the group's log, answers his membership
    # again: a repeated delivery, api-delivery.md).
    "welcome": ("key_package", "group_info", "application", "commit"),
    # Not a KeyPackage at all, or bob's own (he is a member: refused by /commits and /proposals alike).
    "key_package": ("welcome", "group_info", "application", "commit", "proposal", "key_package_bob"),
    # bob is a member of G already, or not a GroupInfo at all.
    "group_info": ("group_info", "key_package", "welcome", "commit", "ratchet_tree"),
    "ratchet_tree": (),
}


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with 1-4 bits flipped, truncated, both, or with trailing bytes: never ``data`` itself."""
    # Mostly bit flips: they get past the decoder to the signature, membership tag, AEAD and tree checks.
    how = draw(
        st.sampled_from(("flip", "flip", "flip", "flip", "truncate", "truncate", "flip+truncate", "extend"))
    )
    out = bytearray(data)
    if "flip" in how:
        # Mostly past MLSMessage's version and wire_format (4 bytes): Hypothesis favours small integers.
        bits = len(data) * 8
        past_header = st.integers(min(32, bits - 1), bits - 1)
        position = st.one_of(past_header, past_header, past_header, st.integers(0, bits - 1))
        for bit in draw(st.lists(position, min_size=1, max_size=4, unique=True)):
            out[bit // 8] ^= 1 << (bit % 8)
    if "truncate" in how:
        # Anywhere, but mostly past the header (a cut in the first bytes only tests MLSMessage.version).
        out = out[: draw(st.one_of(st.integers(len(out) // 4, len(out) - 1), st.integers(0, len(out) - 1)))]
    if how == "extend":
        out += draw(st.binary(min_size=1, max_size=16))
    assert bytes(out) != data
    return bytes(out)


def mls_defect(kind: str, world: World) -> st.SearchStrategy[bytes]:
    """Bytes that an MLS field of ``kind`` must refuse."""
    sources = [world.messages[name] for name in MLS_SOURCES[kind]]
    as_is = [world.messages[name] for name in MLS_REFUSED_AS_IS[kind]]
    options = [st.binary(max_size=400), st.sampled_from(sources).flatmap(mutated)]
    if as_is:
        options.append(st.sampled_from(as_is))
    return st.one_of(*options)


# ---- defects -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    field: str
    value: Any  # MISSING: the field is removed
    parse_level: bool  # refused before any work: 400 invalid_request
    guaranteed: bool  # certainly refused

    def describe(self) -> str:
        return f"{self.field}={'<missing>' if self.value is MISSING else json.dumps(self.value)[:120]}"


def defects_of(f: F, world: World, *, guaranteed_only: bool = False) -> st.SearchStrategy[Defect]:
    """Defective values for field ``f`` (nested defects of lists and objects replace the whole field)."""

    def parse(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Defect]:
        return strategy.map(lambda v: Defect(f.name, v, True, True))

    options: list[st.SearchStrategy[Defect]] = [parse(wrong_type(f))]
    if f.required:
        options.append(st.just(Defect(f.name, MISSING, True, True)))
    if f.kind == "text":
        options.append(
            parse(st.one_of(st.just(""), st.integers(f.max_len + 1, f.max_len + 40).map(lambda n: "x" * n)))
        )
    elif f.kind == "int":
        options.append(parse(_out_of_range(f)))
        if f.semantic_ints:
            options.append(st.sampled_from(f.semantic_ints).map(lambda v: Defect(f.name, v, False, True)))
    elif f.kind == "choice":
        options.append(parse(TEXT.filter(lambda v: v not in f.options)))
    elif f.kind == "b64":
        options.append(parse(BAD_B64))
        if f.non_empty:
            options.append(parse(st.just("")))
        if f.max_bytes is not None:
            options.append(parse(st.binary(min_size=f.max_bytes + 1, max_size=f.max_bytes + 64).map(b64)))
        if f.mls is not None and (f.mls_guaranteed or not guaranteed_only):
            semantic = (
                st.one_of(st.just(b""), mls_defect(f.mls, world))
                if f.mls_guaranteed
                else mls_defect(f.mls, world)
            )
            options.append(semantic.map(lambda v: Defect(f.name, b64(v), False, f.mls_guaranteed)))
    elif f.kind == "list":
        options.append(parse(st.integers(1001, 1100).map(lambda n: [0] * n)))  # over the 1000-item limit
        if f.non_empty:
            options.append(parse(st.just([])))
        if f.bad_items:
            options.append(parse(st.sampled_from(f.bad_items).map(lambda item: [item])))
        if f.item is not None:
            item = f.item
            valid_item = example(item, world)

            def as_list(d: Defect) -> Defect:
                bad = [] if d.value is MISSING else [d.value]
                return Defect(
                    f.name, [valid_item, *bad] if valid_item is not None else bad, d.parse_level, d.guaranteed
                )

            inner = defects_of(item, world, guaranteed_only=guaranteed_only).filter(
                lambda d: d.value is not MISSING
            )
            options.append(inner.map(as_list))
    elif f.kind == "object":
        valid = example(f, world) or {}
        for sub in f.fields:

            def put(d: Defect, sub: F = sub) -> Defect:
                obj = dict(valid)
                if d.value is MISSING:
                    obj.pop(sub.name, None)
                else:
                    obj[sub.name] = d.value
                return Defect(f.name, obj, d.parse_level, d.guaranteed)

            options.append(defects_of(sub, world, guaranteed_only=guaranteed_only).map(put))
    strategy = st.one_of(*options)
    return strategy.filter(lambda d: d.guaranteed) if guaranteed_only else strategy


@dataclass(frozen=True)
class BadBody:
    body: dict[str, Any]
    defects: tuple[Defect, ...]

    @property
    def parse_level(self) -> bool:
        return any(d.parse_level for d in self.defects)

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.defects)


@st.composite
def bad_body(draw: st.DrawFn, variant: Variant, spec: Spec, world: World) -> BadBody:
    """The variant's base body with 1-3 defective fields (the first certainly refused) and maybe unknown
    fields."""
    body = variant.base(world)
    fields = draw(
        st.lists(
            st.sampled_from(variant.fields),
            min_size=1,
            max_size=min(3, len(variant.fields)),
            unique_by=lambda f: f.name,
        )
    )
    defects = [draw(defects_of(fields[0], world, guaranteed_only=True))]
    defects += [draw(defects_of(f, world)) for f in fields[1:]]
    for d in defects:
        if d.value is MISSING:
            body.pop(d.field, None)
        else:
            body[d.field] = d.value
    known = known_field_names(spec)
    unknown = draw(st.dictionaries(TEXT.filter(lambda k: k not in known), JSON_VALUES, max_size=3))
    body.update(unknown)
    return BadBody(body, tuple(defects))


# ---- bodies that are not JSON objects ----------------------------------------------------------------------


def _not_a_json_object(raw: bytes) -> bool:
    try:
        return not isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return True


def not_json_object(world: World, variant: Variant | None) -> st.SearchStrategy[bytes]:
    """Non-empty bodies that are not a JSON object: garbage, broken JSON, JSON of another type (shallow)."""
    valid = json.dumps(variant.base(world) if variant else {}).encode()
    options = [
        st.binary(min_size=1, max_size=200),
        st.integers(1, len(valid) - 1).map(lambda n: valid[:n]) if len(valid) > 1 else st.just(b"{"),
        st.binary(min_size=1, max_size=8).map(lambda junk: valid + junk),
        st.binary(min_size=1, max_size=8).map(lambda junk: junk + valid),
        st.just(valid.replace(b"{", b"\xff{", 1)),  # not UTF-8
        JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
        st.lists(JSON_VALUES, max_size=3).map(lambda v: json.dumps(v).encode()),
        st.sampled_from(
            [
                b"null",
                b"true",
                b"0",
                b'""',
                b"[]",
                b"[{}]",
                b"NaN",
                b"-Infinity",
                b"{",
                b"}",
                b"{]",
                b"{'a': 1}",
                b'{"a": }',
                b'{"a" 1}',
                b"{,}",
                b"\x00",
                b" ",
                b"\n",
            ]
        ),
    ]
    return st.one_of(*options).filter(lambda raw: raw != b"" and _not_a_json_object(raw))
