-- The read model folded from the ledger (PostgresConsentView). Everything here can
-- be dropped and rebuilt from the ledger; the ledger is the only source of truth.
--
-- updated_at columns hold the recorded_at of the latest ledger event folded into
-- the row, not the wall clock of the write, so a rebuild reproduces every row.

-- Per stream and partition, the offset of the next event the view has not applied.
-- Written in the same transaction as the rows below: replaying a batch is a no-op.
CREATE TABLE projection_offset (
    stream      text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (stream, partition)
);

-- The folded state of one phone towards one brand. The snapshot is the encoded list
-- of events the state still depends on (ledger.state.retained_facts); folding them
-- again gives the state back, so there is no second schema of the state to keep.
CREATE TABLE subscriber_state (
    phone       text        NOT NULL,
    brand       text        NOT NULL,
    snapshot    bytea       NOT NULL,
    last_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (phone, brand)
);
CREATE INDEX subscriber_state_brand ON subscriber_state (brand);

-- The standing of each consent, for audit and operations queries (never read by
-- CanSend, which folds the snapshot with the policy at the time of the question).
CREATE TABLE consent_status (
    phone            text        NOT NULL,
    brand            text        NOT NULL,
    campaign         text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('active', 'revoked', 'none')),
    tier             smallint,
    granted_event_id uuid,
    granted_at       timestamptz,
    revoked_event_id uuid,
    revoked_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (phone, brand, campaign)
);
CREATE INDEX consent_status_campaign ON consent_status (brand, campaign, status);

-- Every applied event, once per event id (a retried append that reached the ledger
-- twice is kept at its first position only).
CREATE TABLE ledger_event_copy (
    event_id    uuid        PRIMARY KEY,
    stream      text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    event_type  text        NOT NULL,
    phone       text,
    brand       text        NOT NULL,
    campaign    text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    payload     bytea       NOT NULL,
    UNIQUE (stream, partition, "offset")
);
CREATE INDEX ledger_event_copy_phone ON ledger_event_copy (phone, brand, partition, "offset");
CREATE INDEX ledger_event_copy_brand ON ledger_event_copy (brand, occurred_at);
CREATE INDEX ledger_event_copy_campaign ON ledger_event_copy (brand, campaign, occurred_at);
CREATE INDEX ledger_event_copy_occurred ON ledger_event_copy (occurred_at);
CREATE INDEX ledger_event_copy_recorded ON ledger_event_copy (recorded_at);

-- Every definition and change of a campaign, for "which rules applied then".
CREATE TABLE campaign_version (
    brand       text        NOT NULL,
    campaign    text        NOT NULL,
    event_id    uuid        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    payload     bytea       NOT NULL,
    PRIMARY KEY (brand, campaign, event_id)
);

-- Which campaign sends from a number, by each campaign's current rules. `since` is
-- when those rules took effect: a number two campaigns claim goes to the newer rules.
CREATE TABLE sender_number (
    number   text        NOT NULL,
    brand    text        NOT NULL,
    campaign text        NOT NULL,
    since    timestamptz NOT NULL,
    PRIMARY KEY (number, brand, campaign)
);
CREATE INDEX sender_number_campaign ON sender_number (brand, campaign);
