-- Leases and cross-process wake-ups (issue 15; gateway.leases, gateway.notifications, gateway.sqlite_leases).
-- leases: one row per named lease (compare-and-swap on the row). notifications: one row per wake-up, written
-- by triggers in the transaction of the change a waiter of another process waits for: a mailbox item (its
-- client), an inbox event (its identity), a webhook set, changed or removed (its identity and
-- 'webhooks:changed'; not when the webhook goes with its identity). The id never goes back (AUTOINCREMENT):
-- listeners read "after the last id seen". A deleted identity or client takes its notifications with it.
-- created_at is unix seconds: ((julianday('now') - 2440587.5) * 86400.0).
-- This file is frozen once released: a later schema change is a new migration file.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL, acquired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_by_time ON notifications(created_at);
CREATE INDEX IF NOT EXISTS notifications_by_channel ON notifications(channel);
CREATE TRIGGER IF NOT EXISTS forget_identity_notifications AFTER DELETE ON identities
    BEGIN DELETE FROM notifications WHERE channel = OLD.identity_id; END;
CREATE TRIGGER IF NOT EXISTS forget_client_notifications AFTER DELETE ON clients
    BEGIN DELETE FROM notifications WHERE channel = OLD.client_id; END;
CREATE TRIGGER IF NOT EXISTS notify_mailbox AFTER INSERT ON mailbox
    BEGIN INSERT INTO notifications (channel, created_at) VALUES (NEW.client_id, ((julianday('now') - 2440587.5) * 86400.0)); END;
CREATE TRIGGER IF NOT EXISTS notify_inbox AFTER INSERT ON inbox
    BEGIN INSERT INTO notifications (channel, created_at) VALUES (NEW.identity_id, ((julianday('now') - 2440587.5) * 86400.0)); END;
CREATE TRIGGER IF NOT EXISTS notify_webhook_set AFTER INSERT ON webhooks
    BEGIN INSERT INTO notifications (channel, created_at)
        VALUES (NEW.identity_id, ((julianday('now') - 2440587.5) * 86400.0)), ('webhooks:changed', ((julianday('now') - 2440587.5) * 86400.0)); END;
CREATE TRIGGER IF NOT EXISTS notify_webhook_changed AFTER UPDATE OF url, secret, paused, created_at
    ON webhooks WHEN NEW.url IS NOT OLD.url OR NEW.secret IS NOT OLD.secret OR NEW.paused IS NOT OLD.paused
        OR NEW.created_at IS NOT OLD.created_at
    BEGIN INSERT INTO notifications (channel, created_at)
        VALUES (NEW.identity_id, ((julianday('now') - 2440587.5) * 86400.0)), ('webhooks:changed', ((julianday('now') - 2440587.5) * 86400.0)); END;
CREATE TRIGGER IF NOT EXISTS notify_webhook_removed AFTER DELETE ON webhooks
    WHEN EXISTS (SELECT 1 FROM identities WHERE identity_id = OLD.identity_id)
    BEGIN INSERT INTO notifications (channel, created_at)
        VALUES (OLD.identity_id, ((julianday('now') - 2440587.5) * 86400.0)), ('webhooks:changed', ((julianday('now') - 2440587.5) * 86400.0)); END;
