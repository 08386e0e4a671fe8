-- Budget alerts, Postgres flavour. Keep in step with migrations/sqlite/0005_alerts.sql.
--
-- alerts is an outbox: one row per (entity, budget period, threshold) whose spend reached
-- threshold % of its max_budget. The UNIQUE constraint makes an alert fire once per period
-- per threshold by construction: raising it again (another batch, another replica) inserts
-- nothing. entity_kind is 'key', 'user' or 'team' (as in spend); period_start/period_end
-- are the budget period [start, end), Unix seconds (BIGINT); threshold is a whole percent;
-- spend_usd and budget_usd (DOUBLE PRECISION: sqlx's Any driver cannot decode numeric) are
-- what was seen when the threshold was crossed.
--
-- Delivery to the webhook: state is 'pending' until the webhook answers 2xx ('delivered',
-- delivered_at set) or the attempts run out ('failed'). attempts counts deliveries tried;
-- next_attempt_at is when a pending alert is due next (NULL once it is no longer pending);
-- last_error is the reason of the last failed attempt, without secrets.

CREATE TABLE alerts (
    id              TEXT             PRIMARY KEY,
    entity_kind     TEXT             NOT NULL CHECK (entity_kind IN ('key', 'user', 'team')),
    entity_id       TEXT             NOT NULL,
    period_start    BIGINT           NOT NULL,
    period_end      BIGINT           NOT NULL,
    threshold       BIGINT           NOT NULL CHECK (threshold > 0),
    spend_usd       DOUBLE PRECISION NOT NULL,
    budget_usd      DOUBLE PRECISION NOT NULL,
    created_at      BIGINT           NOT NULL,
    state           TEXT             NOT NULL DEFAULT 'pending'
                                     CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT           NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    UNIQUE (entity_kind, entity_id, period_start, threshold)
);

CREATE INDEX alerts_due ON alerts (state, next_attempt_at);
CREATE INDEX alerts_created ON alerts (created_at);
