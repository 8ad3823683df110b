// Live interop peer: drives ts-mls (npm "ts-mls", pinned in package.json) through a line-oriented JSON
// protocol on stdin/stdout, for tests/interop/ts_mls_peer.py.
//
// One JSON object per line in:  {"id": n, "op": "...", ...args}
// One JSON object per line out: {"id": n, "ok": true, ...result} | {"id": n, "ok": false, "error": "..."}
// Binary values are standard padded base64. Requests are handled strictly one after another. Nothing but
// protocol lines is written to stdout; diagnostics go to stderr.
//
// A peer holds any number of named clients. A client has one identity (basic credential, or x509 after
// set_x509), one signature key pair, one cipher suite, any number of outstanding key packages, and any
// number of groups keyed by group id. Ops that act on a group take an optional `group_id`; without it the
// client's only group is used (an error if it has none or several).
//
// Ops (args -> result; "?" = optional; handshake is "public" (default) or "private"):
//   ping                                                  -> {version, suites}
//   new_client   {client, identity, cipher_suite, grease?} -> {signature_key}
//   set_x509     {client, certificates: [b64 DER]}          -> {}  (later key packages carry this x509
//                credential, end-entity certificate first, instead of the basic one)
//   key_package  {client, not_before?, not_after?}         -> {key_package}
//   create_group {client, group_id}                        -> {epoch}
//   add_psk      {client, psk_id, secret}                  -> {}            (external PSK)
//   add          {client, key_packages, ratchet_tree_extension?, handshake?, group_id?}
//   remove       {client, leaf_indices, handshake?, group_id?}
//   update       {client, handshake?, group_id?}
//   commit       {client, key_packages?, leaf_indices?, psk_ids?, ratchet_tree_extension?, handshake?,
//                 authenticated_data?, group_id?}
//                -> all four: {commit, welcome?, ratchet_tree, epoch, state}
//                All four also take `pending` (default false). Without it the commit is applied to the
//                client's state at once. With `pending: true` the new epoch's state is kept aside and the
//                result adds {pending: true, group_info} (the new epoch's signed GroupInfo with the
//                external_pub and ratchet_tree extensions, for a commit bundle; external_pub as the RFC
//                encodes it unless `external_pub: "ts-mls"`, see group_info); the group then stays at
//                its old epoch until merge_pending adopts the new state or discard_pending drops it. While
//                a commit is pending, ops that would change that group's state (commits, propose, process,
//                send, external_join) are refused; read-only ops see the old epoch.
//   merge_pending   {client, group_id?}                    -> {epoch}   (the new epoch, now current)
//   discard_pending {client, group_id?}                    -> {epoch}   (the old epoch, still current)
//   pending_commit  {client, group_id?}                    -> {pending, epoch?} (epoch of the pending state)
//                A discarded commit sent as a PrivateMessage used a handshake-ratchet generation that
//                ts-mls does not hand back, so after discard_pending a private handshake message in that
//                same epoch is refused (it would reuse a key and nonce); public ones and a new epoch are fine.
//   propose      {client, proposal: add|remove|psk, key_package?|leaf_index?|psk_id?, handshake?, group_id?}
//                -> {message, epoch}
//   join         {client, welcome, ratchet_tree?}          -> {epoch, group_id}
//   process      {client, message}                         -> {kind, epoch, state, data?}
//   send         {client, data, authenticated_data?, group_id?} -> {message}
//   export       {client, label, context, length, group_id?}    -> {secret, epoch}
//   epoch_authenticator {client, group_id?}                -> {epoch_authenticator, epoch}
//   group_info   {client, ratchet_tree_extension?, pending?, external_pub?, group_id?}
//                -> {group_info, ratchet_tree, epoch}
//                With `pending: true`, of the pending commit's new epoch. `external_pub` is "ts-mls"
//                (default: ts-mls 1.6.4 writes the bare HPKE key, and its external_join reads only that,
//                LukaJCB/ts-mls#449) or "rfc9420" (the ExternalPub struct, RFC 9420 §12.4.3.2).
//   external_join {client, group_info, ratchet_tree?, resync?, authenticated_data?} -> {commit, epoch, group_id}
//   members      {client, group_id?}  -> {members: [{leaf_index, identity, credential_type, signature_key}]}
//   group_state  {client, group_id?}  -> {group_id, epoch, cipher_suite, own_leaf_index, tree_hash,
//                                         confirmed_transcript_hash, ratchet_tree, state}
//   shutdown                                               -> answers, then exits

import readline from "node:readline";
import { randomBytes } from "node:crypto";

import {
  acceptAll,
  ciphersuites,
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createGroupInfoWithExternalPubAndRatchetTree,
  createProposal,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  makePskIndex,
  mlsExporter,
  processPrivateMessage,
  processPublicMessage,
} from "ts-mls";
// Public subpath exports of ts-mls ("./*.js" in its package.json exports map).
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { createGroupInfo } from "ts-mls/createCommit.js";

// Keep stdout for protocol lines only, whatever a library might print.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);
console.debug = (...args) => console.error(...args);

class PeerError extends Error {}

// ---------------------------------------------------------------------------------------------- codecs

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function b64(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function unb64(value, name) {
  if (typeof value !== "string" || !B64_RE.test(value)) {
    throw new PeerError(`argument ${name} must be a standard padded base64 string`);
  }
  return new Uint8Array(Buffer.from(value, "base64"));
}

function optB64(args, name) {
  return args[name] === undefined || args[name] === null ? undefined : unb64(args[name], name);
}

function str(args, name) {
  const v = args[name];
  if (typeof v !== "string" || v.length === 0) throw new PeerError(`argument ${name} must be a non-empty string`);
  return v;
}

function int(args, name, { min = 0, max = Number.MAX_SAFE_INTEGER } = {}) {
  const v = args[name];
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new PeerError(`argument ${name} must be an integer in [${min}, ${max}]`);
  }
  return v;
}

function bool(args, name, dflt) {
  const v = args[name];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "boolean") throw new PeerError(`argument ${name} must be a boolean`);
  return v;
}

function list(args, name) {
  const v = args[name];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new PeerError(`argument ${name} must be a list`);
  return v;
}

function wantPublicHandshake(args) {
  const v = args.handshake ?? "public";
  if (v !== "public" && v !== "private") throw new PeerError('argument handshake must be "public" or "private"');
  return v === "public";
}

function encodeMessage(msg) {
  return b64(encodeMlsMessage(msg));
}

function decodeMessage(bytes, what) {
  let decoded;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch (e) {
    throw new PeerError(`${what}: not a decodable MLSMessage: ${e?.message ?? e}`);
  }
  if (decoded === undefined) throw new PeerError(`${what}: not a decodable MLSMessage`);
  const [msg, end] = decoded;
  if (end !== bytes.length) throw new PeerError(`${what}: ${bytes.length - end} trailing bytes after the MLSMessage`);
  return msg;
}

function decodeTree(bytes) {
  let decoded;
  try {
    decoded = decodeRatchetTree(bytes, 0);
  } catch (e) {
    throw new PeerError(`ratchet_tree: not decodable: ${e?.message ?? e}`);
  }
  if (decoded === undefined) throw new PeerError("ratchet_tree: not decodable");
  if (decoded[1] !== bytes.length) throw new PeerError("ratchet_tree: trailing bytes");
  return decoded[0];
}

function wireMessage(wireformat, body) {
  return { version: "mls10", wireformat, ...body };
}

// --------------------------------------------------------------------------------------------- clients

const suiteNameById = new Map(Object.entries(ciphersuites).map(([name, id]) => [id, name]));
const implCache = new Map();
const clients = new Map();

async function suiteImpl(id) {
  const name = suiteNameById.get(id);
  if (name === undefined) throw new PeerError(`cipher suite ${id} is not supported by ts-mls`);
  if (!implCache.has(id)) {
    try {
      implCache.set(id, await getCiphersuiteImpl(getCiphersuiteFromName(name)));
    } catch (e) {
      throw new PeerError(`cipher suite ${id} (${name}) unavailable: ${e?.message ?? e}`);
    }
  }
  return implCache.get(id);
}

function getClient(args) {
  const name = str(args, "client");
  const c = clients.get(name);
  if (c === undefined) throw new PeerError(`unknown client ${JSON.stringify(name)}`);
  return c;
}

function groupKey(groupId) {
  return b64(groupId);
}

/** The group an op acts on: by `group_id` if given, else the client's only group. */
function getGroup(c, args) {
  const gid = optB64(args, "group_id");
  if (gid !== undefined) {
    const state = c.groups.get(groupKey(gid));
    if (state === undefined) throw new PeerError(`client ${c.name} is not in group ${groupKey(gid)}`);
    return state;
  }
  if (c.groups.size === 0) throw new PeerError(`client ${c.name} has no group`);
  if (c.groups.size > 1) throw new PeerError(`client ${c.name} has several groups: pass group_id`);
  return c.groups.values().next().value;
}

function putGroup(c, state) {
  c.groups.set(groupKey(state.groupContext.groupId), state);
}

function pskIndex(c, state) {
  return makePskIndex(state, c.psks);
}

function capabilities(c) {
  if (c.grease) return defaultCapabilities();
  return {
    versions: ["mls10"],
    ciphersuites: Object.keys(ciphersuites),
    extensions: [],
    proposals: [],
    credentials: ["basic", "x509"],
  };
}

async function newKeyPackage(c, args = {}) {
  const lifetime =
    args.not_before !== undefined || args.not_after !== undefined
      ? {
          notBefore: BigInt(int(args, "not_before")),
          notAfter: BigInt(int(args, "not_after")),
        }
      : defaultLifetime;
  const kp = await generateKeyPackageWithKey(
    c.credential ?? { credentialType: "basic", identity: c.identity },
    capabilities(c),
    lifetime,
    [],
    c.signatureKeys,
    c.impl,
  );
  return kp;
}

function epochOf(state) {
  return Number(state.groupContext.epoch);
}

function activeOf(state) {
  return state.groupActiveState.kind;
}

// ------------------------------------------------------------------------------------- pending commits

/** The commit kept aside for the state's group ({state, publicHandshake}), if any. */
function pendingOf(c, state) {
  return c.pending.get(groupKey(state.groupContext.groupId));
}

/** The pending commit of the state's group, which `op` needs. */
function requirePending(c, state, op) {
  const p = pendingOf(c, state);
  if (p === undefined) {
    throw new PeerError(`${op}: client ${c.name} has no pending commit in group ${groupKey(state.groupContext.groupId)}`);
  }
  return p;
}

/** Refuse an op that would change a group's state while a commit for that group is pending. */
function assertNotPending(c, state, op) {
  if (pendingOf(c, state) !== undefined) {
    throw new PeerError(
      `${op}: client ${c.name} has a pending commit in group ${groupKey(state.groupContext.groupId)}: ` +
        "merge_pending or discard_pending first",
    );
  }
}

function epochKey(state) {
  return `${groupKey(state.groupContext.groupId)}@${epochOf(state)}`;
}

/** Refuse a private handshake message in an epoch whose handshake ratchet a discarded commit used. */
function assertHandshakeUsable(c, state, publicHandshake) {
  if (!publicHandshake && c.staleHandshake.has(epochKey(state))) {
    throw new PeerError(
      `client ${c.name}: a discarded private commit used this epoch's handshake key; ` +
        "send handshake messages of this epoch as public messages",
    );
  }
}

/** A QUIC-style variable-length integer (RFC 9420 §2.1.2), the length prefix of `opaque<V>`. */
function varint(n) {
  if (n < 0x40) return Uint8Array.of(n);
  if (n < 0x4000) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  return Uint8Array.of(0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

/** The GroupInfo's external_pub extension_data as RFC 9420 §12.4.3.2 encodes it: ExternalPub{opaque<V>}. */
async function rfcExternalPub(c, state) {
  const keyPair = await c.impl.hpke.deriveKeyPair(state.keySchedule.externalSecret);
  const key = await c.impl.hpke.exportPublicKey(keyPair.publicKey);
  return new Uint8Array([...varint(key.length), ...key]);
}

/**
 * A signed MLSMessage(GroupInfo) of `state` with external_pub (and ratchet_tree if `withTree`).
 * external_pub is ts-mls 1.6.4's own (the bare key, what ts-mls's external_join reads) unless `rfc`,
 * then the RFC's ExternalPub struct (what RFC-conformant readers such as the gateway expect).
 */
async function groupInfoMessage(c, state, withTree, rfc = false) {
  let gi;
  if (rfc) {
    const extensions = [{ extensionType: "external_pub", extensionData: await rfcExternalPub(c, state) }];
    if (withTree) extensions.push({ extensionType: "ratchet_tree", extensionData: encodeRatchetTree(state.ratchetTree) });
    gi = await createGroupInfo(state.groupContext, state.confirmationTag, state, extensions, c.impl);
  } else {
    gi = withTree
      ? await createGroupInfoWithExternalPubAndRatchetTree(state, [], c.impl)
      : await createGroupInfoWithExternalPub(state, [], c.impl);
  }
  return encodeMessage(wireMessage("mls_group_info", { groupInfo: gi }));
}

function wantRfcExternalPub(args, dflt) {
  const v = args.external_pub ?? dflt;
  if (v !== "ts-mls" && v !== "rfc9420") throw new PeerError('argument external_pub must be "ts-mls" or "rfc9420"');
  return v === "rfc9420";
}

// ------------------------------------------------------------------------------------------------- ops

async function commitOp(c, args, extraProposals) {
  const state = getGroup(c, args);
  assertNotPending(c, state, "commit");
  const publicHandshake = wantPublicHandshake(args);
  assertHandshakeUsable(c, state, publicHandshake);
  const pending = bool(args, "pending", false);
  const rfcExternalPub = wantRfcExternalPub(args, "rfc9420");
  const result = await createCommit(
    { state, cipherSuite: c.impl, pskIndex: pskIndex(c, state) },
    {
      wireAsPublicMessage: publicHandshake,
      extraProposals,
      ratchetTreeExtension: bool(args, "ratchet_tree_extension", false),
      authenticatedData: optB64(args, "authenticated_data"),
    },
  );
  const out = {
    commit: encodeMessage(result.commit),
    ratchet_tree: b64(encodeRatchetTree(result.newState.ratchetTree)),
    epoch: epochOf(result.newState),
    state: activeOf(result.newState),
  };
  if (result.welcome !== undefined) out.welcome = encodeMessage(wireMessage("mls_welcome", { welcome: result.welcome }));
  if (pending) {
    c.pending.set(groupKey(state.groupContext.groupId), { state: result.newState, publicHandshake });
    out.pending = true;
    out.group_info = await groupInfoMessage(c, result.newState, true, rfcExternalPub);
  } else {
    putGroup(c, result.newState);
  }
  return out;
}

function addProposals(args) {
  return list(args, "key_packages").map((kpB64, i) => {
    const msg = decodeMessage(unb64(kpB64, `key_packages[${i}]`), `key_packages[${i}]`);
    if (msg.wireformat !== "mls_key_package") throw new PeerError(`key_packages[${i}] is a ${msg.wireformat}`);
    return { proposalType: "add", add: { keyPackage: msg.keyPackage } };
  });
}

function removeProposals(args) {
  return list(args, "leaf_indices").map((v, i) => {
    if (!Number.isSafeInteger(v) || v < 0 || v > 0xffffffff) {
      throw new PeerError(`leaf_indices[${i}] must be a uint32`);
    }
    return { proposalType: "remove", remove: { removed: v } };
  });
}

function pskProposals(c, args) {
  return list(args, "psk_ids").map((v, i) => {
    const pskId = unb64(v, `psk_ids[${i}]`);
    if (c.psks[b64(pskId)] === undefined) throw new PeerError(`psk_ids[${i}]: no such external PSK (use add_psk)`);
    return {
      proposalType: "psk",
      psk: { preSharedKeyId: { psktype: "external", pskId, pskNonce: new Uint8Array(randomBytes(c.impl.kdf.size)) } },
    };
  });
}

const ops = {
  async new_client(args) {
    const name = str(args, "client");
    if (clients.has(name)) throw new PeerError(`client ${JSON.stringify(name)} already exists`);
    const identity = unb64(args.identity, "identity");
    const suite = int(args, "cipher_suite", { max: 0xffff });
    const impl = await suiteImpl(suite);
    const signatureKeys = await impl.signature.keygen();
    clients.set(name, {
      name,
      identity,
      suite,
      impl,
      signatureKeys,
      grease: bool(args, "grease", true),
      keyPackages: [],
      groups: new Map(),
      psks: {},
      pending: new Map(), // group key -> {state, publicHandshake}: a commit not adopted yet
      staleHandshake: new Set(), // "group@epoch" whose handshake ratchet a discarded private commit used
    });
    return { signature_key: b64(signatureKeys.publicKey) };
  },

  async set_x509(args) {
    const c = getClient(args);
    const certificates = list(args, "certificates").map((v, i) => unb64(v, `certificates[${i}]`));
    if (certificates.length === 0) throw new PeerError("certificates: at least one is needed");
    c.credential = { credentialType: "x509", certificates };
    return {};
  },

  async key_package(args) {
    const c = getClient(args);
    const kp = await newKeyPackage(c, args);
    c.keyPackages.push({ ...kp, ref: await makeKeyPackageRef(kp.publicPackage, c.impl.hash) });
    return { key_package: encodeMessage(wireMessage("mls_key_package", { keyPackage: kp.publicPackage })) };
  },

  async create_group(args) {
    const c = getClient(args);
    const groupId = unb64(args.group_id, "group_id");
    if (c.groups.has(groupKey(groupId))) throw new PeerError(`client ${c.name} already has group ${groupKey(groupId)}`);
    const kp = await newKeyPackage(c);
    const state = await createGroup(groupId, kp.publicPackage, kp.privatePackage, [], c.impl);
    putGroup(c, state);
    return { epoch: epochOf(state) };
  },

  async add_psk(args) {
    const c = getClient(args);
    c.psks[b64(unb64(args.psk_id, "psk_id"))] = unb64(args.secret, "secret");
    return {};
  },

  async add(args) {
    const c = getClient(args);
    const proposals = addProposals(args);
    if (proposals.length === 0) throw new PeerError("add: key_packages is empty");
    return commitOp(c, args, proposals);
  },

  async remove(args) {
    const c = getClient(args);
    const proposals = removeProposals(args);
    if (proposals.length === 0) throw new PeerError("remove: leaf_indices is empty");
    return commitOp(c, args, proposals);
  },

  async update(args) {
    return commitOp(getClient(args), args, []);
  },

  async commit(args) {
    const c = getClient(args);
    return commitOp(c, args, [...addProposals(args), ...removeProposals(args), ...pskProposals(c, args)]);
  },

  async propose(args) {
    const c = getClient(args);
    const state = getGroup(c, args);
    assertNotPending(c, state, "propose");
    assertHandshakeUsable(c, state, wantPublicHandshake(args));
    const kind = str(args, "proposal");
    let proposals;
    if (kind === "add") proposals = addProposals({ key_packages: [args.key_package] });
    else if (kind === "remove") proposals = removeProposals({ leaf_indices: [args.leaf_index] });
    else if (kind === "psk") proposals = pskProposals(c, { psk_ids: [args.psk_id] });
    else throw new PeerError('argument proposal must be "add", "remove" or "psk"');
    const res = await createProposal(
      state,
      wantPublicHandshake(args),
      proposals[0],
      c.impl,
      optB64(args, "authenticated_data"),
    );
    putGroup(c, res.newState);
    return { message: encodeMessage(res.message), epoch: epochOf(res.newState) };
  },

  async join(args) {
    const c = getClient(args);
    const msg = decodeMessage(unb64(args.welcome, "welcome"), "welcome");
    if (msg.wireformat !== "mls_welcome") throw new PeerError(`welcome is a ${msg.wireformat}`);
    const tree = args.ratchet_tree == null ? undefined : decodeTree(unb64(args.ratchet_tree, "ratchet_tree"));
    const refs = msg.welcome.secrets.map((s) => b64(s.newMember));
    const idx = c.keyPackages.findIndex((kp) => refs.includes(b64(kp.ref)));
    if (idx < 0) throw new PeerError(`welcome is for none of client ${c.name}'s key packages`);
    const kp = c.keyPackages[idx];
    const state = await joinGroup(
      msg.welcome,
      kp.publicPackage,
      kp.privatePackage,
      makePskIndex(undefined, c.psks),
      c.impl,
      tree,
    );
    c.keyPackages.splice(idx, 1);
    putGroup(c, state);
    return { epoch: epochOf(state), group_id: b64(state.groupContext.groupId) };
  },

  async process(args) {
    const c = getClient(args);
    const msg = decodeMessage(unb64(args.message, "message"), "message");
    let groupId, kind;
    if (msg.wireformat === "mls_private_message") {
      groupId = msg.privateMessage.groupId;
      kind = msg.privateMessage.contentType;
    } else if (msg.wireformat === "mls_public_message") {
      groupId = msg.publicMessage.content.groupId;
      kind = msg.publicMessage.content.contentType;
    } else {
      throw new PeerError(`process: cannot process a ${msg.wireformat} (use join / external_join)`);
    }
    const state = getGroup(c, { group_id: b64(groupId) });
    assertNotPending(c, state, "process");
    // processMessage() would drop the PSK index for PrivateMessages (ts-mls 1.6.4 passes emptyPskIndex
    // there), so call the two wire-format-specific functions directly.
    const res =
      msg.wireformat === "mls_private_message"
        ? await processPrivateMessage(state, msg.privateMessage, pskIndex(c, state), c.impl, acceptAll)
        : { kind: "newState", ...(await processPublicMessage(state, msg.publicMessage, pskIndex(c, state), c.impl, acceptAll)) };
    putGroup(c, res.newState);
    const out = { kind, epoch: epochOf(res.newState), state: activeOf(res.newState) };
    if (res.kind === "applicationMessage") {
      out.kind = "application";
      out.data = b64(res.message);
    } else if (res.actionTaken !== "accept") {
      throw new PeerError(`process: ${kind} was not accepted (${res.actionTaken})`);
    }
    return out;
  },

  async send(args) {
    const c = getClient(args);
    const state = getGroup(c, args);
    assertNotPending(c, state, "send");
    const res = await createApplicationMessage(
      state,
      unb64(args.data, "data"),
      c.impl,
      optB64(args, "authenticated_data"),
    );
    putGroup(c, res.newState);
    return { message: encodeMessage(wireMessage("mls_private_message", { privateMessage: res.privateMessage })) };
  },

  async export(args) {
    const c = getClient(args);
    const state = getGroup(c, args);
    if (typeof args.label !== "string") throw new PeerError("argument label must be a string");
    const secret = await mlsExporter(
      state.keySchedule.exporterSecret,
      args.label,
      unb64(args.context, "context"),
      int(args, "length", { max: 0xffff }),
      c.impl,
    );
    return { secret: b64(secret), epoch: epochOf(state) };
  },

  async epoch_authenticator(args) {
    const state = getGroup(getClient(args), args);
    return { epoch_authenticator: b64(state.keySchedule.epochAuthenticator), epoch: epochOf(state) };
  },

  async group_info(args) {
    const c = getClient(args);
    const current = getGroup(c, args);
    const state = bool(args, "pending", false) ? requirePending(c, current, "group_info").state : current;
    return {
      group_info: await groupInfoMessage(
        c,
        state,
        bool(args, "ratchet_tree_extension", false),
        wantRfcExternalPub(args, "ts-mls"),
      ),
      ratchet_tree: b64(encodeRatchetTree(state.ratchetTree)),
      epoch: epochOf(state),
    };
  },

  async merge_pending(args) {
    const c = getClient(args);
    const state = getGroup(c, args);
    const p = requirePending(c, state, "merge_pending");
    c.pending.delete(groupKey(state.groupContext.groupId));
    putGroup(c, p.state);
    return { epoch: epochOf(p.state) };
  },

  async discard_pending(args) {
    const c = getClient(args);
    const state = getGroup(c, args);
    const p = requirePending(c, state, "discard_pending");
    c.pending.delete(groupKey(state.groupContext.groupId));
    if (!p.publicHandshake) c.staleHandshake.add(epochKey(state));
    return { epoch: epochOf(state) };
  },

  async pending_commit(args) {
    const c = getClient(args);
    const p = pendingOf(c, getGroup(c, args));
    return p === undefined ? { pending: false } : { pending: true, epoch: epochOf(p.state) };
  },

  async external_join(args) {
    const c = getClient(args);
    const msg = decodeMessage(unb64(args.group_info, "group_info"), "group_info");
    if (msg.wireformat !== "mls_group_info") throw new PeerError(`group_info is a ${msg.wireformat}`);
    const current = c.groups.get(groupKey(msg.groupInfo.groupContext.groupId));
    if (current !== undefined) assertNotPending(c, current, "external_join");
    const tree = args.ratchet_tree == null ? undefined : decodeTree(unb64(args.ratchet_tree, "ratchet_tree"));
    const kp = await newKeyPackage(c);
    const res = await joinGroupExternal(
      msg.groupInfo,
      kp.publicPackage,
      kp.privatePackage,
      bool(args, "resync", false),
      c.impl,
      tree,
      undefined,
      optB64(args, "authenticated_data"),
    );
    putGroup(c, res.newState);
    return {
      commit: encodeMessage(wireMessage("mls_public_message", { publicMessage: res.publicMessage })),
      epoch: epochOf(res.newState),
      group_id: b64(res.newState.groupContext.groupId),
    };
  },

  async members(args) {
    const state = getGroup(getClient(args), args);
    const members = [];
    state.ratchetTree.forEach((node, nodeIndex) => {
      if (nodeIndex % 2 === 0 && node !== undefined && node.nodeType === "leaf") {
        const cred = node.leaf.credential;
        members.push({
          leaf_index: nodeIndex / 2,
          identity: cred.credentialType === "basic" ? b64(cred.identity) : "",
          credential_type: cred.credentialType,
          signature_key: b64(node.leaf.signaturePublicKey),
        });
      }
    });
    return { members };
  },

  async group_state(args) {
    const state = getGroup(getClient(args), args);
    const gc = state.groupContext;
    return {
      group_id: b64(gc.groupId),
      epoch: epochOf(state),
      cipher_suite: ciphersuites[gc.cipherSuite],
      own_leaf_index: state.privatePath.leafIndex,
      tree_hash: b64(gc.treeHash),
      confirmed_transcript_hash: b64(gc.confirmedTranscriptHash),
      ratchet_tree: b64(encodeRatchetTree(state.ratchetTree)),
      state: activeOf(state),
    };
  },

  async ping() {
    return { version: "ts-mls 1.6.4", suites: [...suiteNameById.keys()] };
  },
};

// -------------------------------------------------------------------------------------------- protocol

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function errorMessage(e) {
  if (e instanceof Error) {
    const name = e instanceof PeerError ? "" : `${e.constructor?.name ?? "Error"}: `;
    return `${name}${e.message}`;
  }
  return String(e);
}

async function handle(line) {
  if (line.trim() === "") return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    send({ id: null, ok: false, error: `bad JSON: ${e.message}` });
    return;
  }
  if (req === null || typeof req !== "object" || Array.isArray(req)) {
    send({ id: null, ok: false, error: "request must be a JSON object" });
    return;
  }
  const id = req.id ?? null;
  if (req.op === "shutdown") {
    send({ id, ok: true });
    shuttingDown = true;
    rl.close();
    return;
  }
  const fn = Object.hasOwn(ops, req.op) ? ops[req.op] : undefined;
  if (fn === undefined) {
    send({ id, ok: false, error: `unknown op ${JSON.stringify(req.op)}` });
    return;
  }
  try {
    const result = await fn(req);
    send({ id, ok: true, ...result });
  } catch (e) {
    if (!(e instanceof PeerError) && process.env.TS_MLS_PEER_DEBUG) console.error(e);
    send({ id, ok: false, error: errorMessage(e) });
  }
}

let shuttingDown = false;
let queue = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (shuttingDown) return;
  queue = queue.then(() => handle(line)).catch((e) => console.error("peer: internal error:", e));
});
rl.on("close", () => {
  queue.then(() => process.stdout.write("", () => process.exit(0)));
});
process.on("unhandledRejection", (e) => console.error("peer: unhandled rejection:", e));
process.on("uncaughtException", (e) => console.error("peer: uncaught exception:", e));
