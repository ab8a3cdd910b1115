-- Version 1: the authorization server's state, one table per kind of
-- record. Times are Unix nanoseconds; -9223372036854775808 is the zero
-- time. Lists (scopes) and client metadata are JSON. Codes and refresh
-- tokens are stored only by the SHA-256 of their value.

CREATE TABLE clients (
	id            TEXT PRIMARY KEY,
	secret_hash   BLOB,
	metadata      TEXT NOT NULL,
	created_at    INTEGER NOT NULL,
	from_document INTEGER NOT NULL,
	dynamic       INTEGER NOT NULL
) STRICT;

CREATE TABLE grants (
	id         TEXT PRIMARY KEY,
	client_id  TEXT NOT NULL,
	subject    TEXT NOT NULL,
	resource   TEXT NOT NULL,
	scopes     TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	revoked    INTEGER NOT NULL
) STRICT;
CREATE INDEX grants_expires_at ON grants (expires_at);
CREATE INDEX grants_client_id ON grants (client_id);
CREATE INDEX grants_subject ON grants (subject);

CREATE TABLE codes (
	hash           TEXT PRIMARY KEY,
	grant_id       TEXT NOT NULL,
	client_id      TEXT NOT NULL,
	redirect_uri   TEXT NOT NULL,
	code_challenge TEXT NOT NULL,
	scopes         TEXT NOT NULL,
	resource       TEXT NOT NULL,
	subject        TEXT NOT NULL,
	expires_at     INTEGER NOT NULL,
	used           INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX codes_expires_at ON codes (expires_at);

CREATE TABLE refresh_tokens (
	hash            TEXT PRIMARY KEY,
	grant_id        TEXT NOT NULL,
	client_id       TEXT NOT NULL,
	scopes          TEXT NOT NULL,
	issued_at       INTEGER NOT NULL,
	expires_at      INTEGER NOT NULL,
	rotated_at      INTEGER NOT NULL,
	successor       TEXT NOT NULL,
	replaced_unused INTEGER NOT NULL
) STRICT;
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

CREATE TABLE access_tokens (
	jti        TEXT PRIMARY KEY,
	grant_id   TEXT NOT NULL,
	client_id  TEXT NOT NULL,
	subject    TEXT NOT NULL,
	resource   TEXT NOT NULL,
	scopes     TEXT NOT NULL,
	issued_at  INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	revoked    INTEGER NOT NULL
) STRICT;
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);

-- The signing keys, opaque bytes as the server gives them: one row.
CREATE TABLE signing_keys (
	id         INTEGER PRIMARY KEY CHECK (id = 1),
	current    BLOB NOT NULL,
	previous   BLOB,
	rotated_at INTEGER NOT NULL
) STRICT;
