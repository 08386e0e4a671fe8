-- Budget alerts by email, SQLite flavour. Keep in step with
-- migrations/postgres/0014_alert_email.sql.
--
-- Each alert is delivered on two channels, each once and with its own retries: the webhook
-- (state, attempts, next_attempt_at, last_error, delivered_at, as before) and email (the
-- email_ columns, with the same meanings). A channel failing never resends the other.
-- Alerts raised before this migration are pending on email too, as a new alert is: they are
-- mailed once budgets.alert_email is configured, as pending alerts are posted once a
-- webhook is.

ALTER TABLE alerts ADD COLUMN email_state TEXT NOT NULL DEFAULT 'pending'
    CHECK (email_state IN ('pending', 'delivered', 'failed'));
ALTER TABLE alerts ADD COLUMN email_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN email_next_attempt_at INTEGER;
ALTER TABLE alerts ADD COLUMN email_last_error TEXT;
ALTER TABLE alerts ADD COLUMN email_delivered_at INTEGER;

UPDATE alerts SET email_next_attempt_at = created_at;

CREATE INDEX alerts_email_due ON alerts (email_state, email_next_attempt_at);
