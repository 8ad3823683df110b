-- Leases and cross-process wake-ups (issue 15; gateway.leases, gateway.notifications, gateway.sqlite_leases):
-- the PostgreSQL twin of gateway/migrations/sqlite/0002.leases_notifications.sql, over the tables of
-- 0001.baseline (identities, clients, mailbox, inbox, webhooks). leases: one row per named lease
-- (compare-and-swap on the row). notifications: one row per wake-up, written by the triggers of mailbox,
-- inbox and webhooks in the transaction of the change; each row is published at commit by pg_notify on the
-- channel gateway.notifications.CHANNEL ('mlsgw_wakeups'), which every process's listener LISTENs on. A
-- deleted identity or client takes its notifications with it.
-- This file is frozen once released: a later schema change is a new migration file.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, channel TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL DEFAULT EXTRACT(EPOCH FROM clock_timestamp()));
CREATE INDEX IF NOT EXISTS notifications_by_time ON notifications(created_at);
CREATE INDEX IF NOT EXISTS notifications_by_channel ON notifications(channel);
CREATE OR REPLACE FUNCTION mlsgw_publish_notification() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mlsgw_wakeups', NEW.channel);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS publish_notification ON notifications;
CREATE TRIGGER publish_notification AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION mlsgw_publish_notification();
CREATE OR REPLACE FUNCTION mlsgw_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'mailbox' THEN
        INSERT INTO notifications (channel) VALUES (NEW.client_id);
    ELSIF TG_TABLE_NAME = 'inbox' THEN
        INSERT INTO notifications (channel) VALUES (NEW.identity_id);
    ELSIF TG_TABLE_NAME = 'identities' THEN  -- a deleted identity takes its notifications with it
        DELETE FROM notifications WHERE channel = OLD.identity_id;
    ELSIF TG_TABLE_NAME = 'clients' THEN
        DELETE FROM notifications WHERE channel = OLD.client_id;
    ELSIF TG_OP = 'DELETE' THEN  -- not when the webhook goes with its identity
        IF EXISTS (SELECT 1 FROM identities WHERE identity_id = OLD.identity_id) THEN
            INSERT INTO notifications (channel) VALUES (OLD.identity_id), ('webhooks:changed');
        END IF;
    ELSIF TG_OP = 'INSERT' OR NEW.url IS DISTINCT FROM OLD.url OR NEW.secret IS DISTINCT FROM OLD.secret
            OR NEW.paused IS DISTINCT FROM OLD.paused OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        INSERT INTO notifications (channel) VALUES (NEW.identity_id), ('webhooks:changed');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS notify_mailbox ON mailbox;
CREATE TRIGGER notify_mailbox AFTER INSERT ON mailbox FOR EACH ROW EXECUTE FUNCTION mlsgw_notify_row();
DROP TRIGGER IF EXISTS notify_inbox ON inbox;
CREATE TRIGGER notify_inbox AFTER INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION mlsgw_notify_row();
DROP TRIGGER IF EXISTS forget_identity_notifications ON identities;
CREATE TRIGGER forget_identity_notifications AFTER DELETE ON identities
    FOR EACH ROW EXECUTE FUNCTION mlsgw_notify_row();
DROP TRIGGER IF EXISTS forget_client_notifications ON clients;
CREATE TRIGGER forget_client_notifications AFTER DELETE ON clients
    FOR EACH ROW EXECUTE FUNCTION mlsgw_notify_row();
DROP TRIGGER IF EXISTS notify_webhooks ON webhooks;
CREATE TRIGGER notify_webhooks AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION mlsgw_notify_row();
