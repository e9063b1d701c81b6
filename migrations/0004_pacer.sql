-- The shared pacer: one row per limiter key (API action, access endpoint, account), so
-- that every keyfleet process on this database takes its send slots from one sequence
-- and adapts one rate. Written on a separate connection with synchronous=NORMAL
-- (src/store/pacer.rs): losing the last updates in a power failure only loses pacing
-- history, which `attempts.sent_at` re-seeds.
CREATE TABLE pacer (
    action          TEXT    NOT NULL,
    -- The access endpoint requests of this key reach (`https://cvm.ap-guangzhou...`).
    endpoint        TEXT    NOT NULL,
    -- SHA-256 of the SecretId, first 16 hex digits: the account scope without the id.
    account         TEXT    NOT NULL,
    -- Unix ms (fractional): the last slot handed out, and the earliest the next may be.
    slot_at         REAL    NOT NULL,
    next_at         REAL    NOT NULL,
    -- Slots handed out so far: a process compares it with its own to know its share.
    slots           INTEGER NOT NULL DEFAULT 1,
    -- Requests per second in force at the last reservation (the adaptive rate).
    rate            REAL    NOT NULL,
    -- The rate that was left at the last throttle (requests per second), and when
    -- that throttle lowered the rate (Unix ms); NULL before any throttle.
    ceiling         REAL,
    throttled_at    INTEGER,
    PRIMARY KEY (action, endpoint, account)
) WITHOUT ROWID;
