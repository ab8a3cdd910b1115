-- evergrant store schema, version 1.
--
-- Keys, issuers, redirect URIs and client IDs are bytea: they are Go strings,
-- which may hold any bytes (NUL included, which text cannot), and bytea sorts
-- in byte order, the order List promises. Rows are found by the SHA-256 of
-- what identifies them, so a long key does not hit the index size limit.
-- Grants and registrations themselves are JSON (json, not jsonb: jsonb
-- refuses the escaped NUL that encoding/json writes).

CREATE TABLE evergrant_grants (
    key_hash   bytea       PRIMARY KEY, -- SHA-256 of key
    key        bytea       NOT NULL,
    grant_json json        NOT NULL,    -- store.Grant; holds tokens
    saved_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE evergrant_registrations (
    id_hash           bytea       PRIMARY KEY, -- SHA-256 of (issuer, redirect URI)
    issuer            bytea       NOT NULL,
    redirect_uri      bytea       NOT NULL,
    client_id         bytea       NOT NULL,
    registration_json json        NOT NULL,    -- store.Registration; holds the client secret
    saved_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX evergrant_registrations_client ON evergrant_registrations (client_id);

-- Leases behind Store.Lock: a row is the lock of one key, held by owner
-- (a random token of one Lock call) until expires_at, which its holder
-- keeps pushing forward while it holds the lock. Times are the database's.
CREATE TABLE evergrant_locks (
    key_hash   bytea       PRIMARY KEY, -- SHA-256 of the grant's key
    owner      text        NOT NULL,
    expires_at timestamptz NOT NULL
);
