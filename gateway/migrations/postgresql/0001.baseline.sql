-- The PostgreSQL baseline of the gateway store: gateway/sqlite_schema.py's SCHEMA, DELIVERY_SCHEMA, added
-- columns and AUDIT_CHAIN_SCHEMA (schema version 6) in PostgreSQL's types: BLOB -> BYTEA, REAL -> DOUBLE
-- PRECISION, INTEGER -> BIGINT, AUTOINCREMENT -> identity. Tables the portable SQL addresses by rowid (KEK
-- re-wrap batches, tenant deletion batches, insertion order) get a real column named rowid, last, so
-- SQLite's statements run unchanged. The audit table's append-only and erase-only rules are a plpgsql
-- trigger. Applied by yoyo-migrations (gateway.schema_migrations).
CREATE TABLE tenants (
    tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    custody_mode TEXT NOT NULL DEFAULT 'token');
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY, tenant_id TEXT REFERENCES tenants(tenant_id), token_hash BYTEA NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION, client_id TEXT,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE TABLE identities (
    identity_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), name TEXT NOT NULL,
    cipher_suite BIGINT NOT NULL, credential BYTEA NOT NULL, signature_key_ref BYTEA NOT NULL,
    signature_public_key BYTEA NOT NULL, custody_signature TEXT NOT NULL, custody_hpke TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, auto_join BIGINT NOT NULL DEFAULT 1);
CREATE INDEX identities_by_tenant ON identities(tenant_id);
CREATE TABLE key_packages (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, ref BYTEA NOT NULL,
    key_package BYTEA NOT NULL, init_key_ref BYTEA NOT NULL, leaf_key_ref BYTEA NOT NULL,
    last_resort BIGINT NOT NULL, consumed BIGINT NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (identity_id, ref));
CREATE TABLE groups (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, group_id BYTEA NOT NULL,
    epoch BIGINT NOT NULL, state BYTEA NOT NULL, pending BYTEA, updated_at DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL DEFAULT 0, applied_seq BIGINT NOT NULL DEFAULT 0,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (identity_id, group_id));
CREATE TABLE software_keys (
    key_ref BYTEA PRIMARY KEY, sealed BYTEA NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE TABLE wrapped_keys (
    key_ref BYTEA PRIMARY KEY, blob BYTEA NOT NULL, kek_id BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, tenant_id TEXT,
    identity_id TEXT, group_id BYTEA, epoch BIGINT, key_ref BYTEA NOT NULL, operation TEXT NOT NULL,
    custody TEXT NOT NULL, ok BIGINT NOT NULL, token_id TEXT, detail TEXT, prev_hash BYTEA, hash BYTEA,
    purged_by BIGINT);
CREATE TABLE psks (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, psk_id BYTEA NOT NULL,
    sealed BYTEA NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (identity_id, psk_id));
CREATE TABLE idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, request_hash BYTEA NOT NULL, status BIGINT NOT NULL,
    body BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL, identity_id TEXT,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (scope, key));
CREATE INDEX idempotency_by_age ON idempotency(created_at);
CREATE INDEX idempotency_by_identity ON idempotency(identity_id) WHERE identity_id IS NOT NULL;
CREATE TABLE keks (
    label TEXT PRIMARY KEY, kind TEXT NOT NULL, version BIGINT NOT NULL, state TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, retired_at DOUBLE PRECISION, destroyed_at DOUBLE PRECISION,
    UNIQUE (kind, version));
-- the group service (api-delivery.md)
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE INDEX clients_by_tenant ON clients(tenant_id);
CREATE TABLE endpoint_keys (
    tenant_id TEXT NOT NULL, signature_key BYTEA NOT NULL, endpoint_id TEXT NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (tenant_id, signature_key));
CREATE INDEX endpoint_keys_by_endpoint ON endpoint_keys(endpoint_id);
CREATE TABLE directory_key_packages (
    client_id TEXT NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE, ref BYTEA NOT NULL,
    cipher_suite BIGINT NOT NULL, key_package BYTEA NOT NULL, last_resort BIGINT NOT NULL,
    claimed_at DOUBLE PRECISION, created_at DOUBLE PRECISION NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (client_id, ref));
CREATE INDEX directory_by_ref ON directory_key_packages(ref);
CREATE TABLE group_logs (
    tenant_id TEXT NOT NULL, group_id BYTEA NOT NULL, cipher_suite BIGINT NOT NULL, epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL, group_info BYTEA NOT NULL, ratchet_tree BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (tenant_id, group_id));
CREATE TABLE group_members (
    tenant_id TEXT NOT NULL, group_id BYTEA NOT NULL, leaf_index BIGINT NOT NULL, endpoint_id TEXT,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (tenant_id, group_id, leaf_index));
CREATE INDEX group_members_by_endpoint ON group_members(endpoint_id);
CREATE TABLE log_entries (
    tenant_id TEXT NOT NULL, group_id BYTEA NOT NULL, seq BIGINT NOT NULL, epoch BIGINT NOT NULL,
    kind TEXT NOT NULL, sender TEXT, message BYTEA NOT NULL, welcome BYTEA, group_info BYTEA,
    ratchet_tree BYTEA, digest BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (tenant_id, group_id, seq));
CREATE INDEX log_entries_by_digest ON log_entries(tenant_id, group_id, digest);
CREATE TABLE log_welcomes (
    tenant_id TEXT NOT NULL, group_id BYTEA NOT NULL, seq BIGINT NOT NULL, digest BYTEA NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (tenant_id, digest));
CREATE TABLE mailbox (
    cursor BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE, tenant_id TEXT NOT NULL,
    group_id BYTEA NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE INDEX mailbox_by_client ON mailbox(client_id, cursor);
CREATE TABLE inbox (
    cursor BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, group_id BYTEA NOT NULL,
    seq BIGINT NOT NULL, event BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE INDEX inbox_by_identity ON inbox(identity_id, cursor);
CREATE INDEX inbox_by_seq ON inbox(identity_id, group_id, seq);
CREATE TABLE hosted_pending (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, tenant_id TEXT NOT NULL,
    group_id BYTEA NOT NULL, up_to_seq BIGINT NOT NULL, PRIMARY KEY (identity_id, group_id));
CREATE TABLE group_ratchets (
    identity_id TEXT NOT NULL, group_id BYTEA NOT NULL, version BIGINT NOT NULL,
    applied_seq BIGINT NOT NULL, sealed BYTEA NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (identity_id, group_id),
    FOREIGN KEY (identity_id, group_id) REFERENCES groups(identity_id, group_id) ON DELETE CASCADE);
CREATE INDEX group_members_with_endpoint ON group_members(tenant_id, group_id, leaf_index)
    WHERE endpoint_id IS NOT NULL;
CREATE TABLE webhooks (
    identity_id TEXT PRIMARY KEY REFERENCES identities(identity_id) ON DELETE CASCADE, url TEXT NOT NULL,
    secret BYTEA NOT NULL, delivered_cursor BIGINT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
    failing_since DOUBLE PRECISION, next_attempt_at DOUBLE PRECISION, paused BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE TABLE credential_policies (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(tenant_id) ON DELETE CASCADE, document TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY);
-- the audit chain and retention (issue 16)
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY, head BYTEA NOT NULL, at_ms BIGINT NOT NULL, signature BYTEA NOT NULL,
    key_label TEXT NOT NULL);
CREATE TABLE tenant_retention (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(tenant_id) ON DELETE CASCADE, mailbox_s DOUBLE PRECISION,
    idempotency_s DOUBLE PRECISION, audit_s DOUBLE PRECISION, legal_hold BIGINT NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL);
CREATE INDEX audit_by_tenant ON audit(tenant_id, at);
-- Audit records are append-only; the one update allowed is retention erasing a row's contents in place,
-- keeping its seq, time, tenant and chain link and naming the purge (sqlite_schema.AUDIT_CHAIN_SCHEMA).
CREATE FUNCTION audit_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit records are append-only';
    END IF;
    IF NOT (OLD.purged_by IS NULL AND NEW.purged_by IS NOT NULL AND NEW.seq = OLD.seq AND NEW.at = OLD.at
        AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id AND NEW.hash = OLD.hash
        AND NEW.prev_hash = OLD.prev_hash AND NEW.request_id = '' AND NEW.identity_id IS NULL
        AND NEW.token_id IS NULL AND NEW.group_id IS NULL AND NEW.epoch IS NULL
        AND octet_length(NEW.key_ref) = 0 AND NEW.operation = '' AND NEW.custody = '' AND NEW.ok = 0
        AND NEW.detail IS NULL) THEN
        RAISE EXCEPTION 'audit records are append-only (retention only erases them)';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_erase_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_erase_only();
