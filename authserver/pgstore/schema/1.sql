-- Version 1: the authorization server's state, one table per kind of
-- record, named evergrant_as_* so that they can share a schema with the
-- client's grant store (store.Postgres). Times are Unix nanoseconds;
-- -9223372036854775808 is the zero time. Lists (scopes) and client
-- metadata are JSON text. Codes and refresh tokens are stored only by the
-- SHA-256 of their value.

CREATE TABLE evergrant_as_clients (
	id            text PRIMARY KEY,
	secret_hash   bytea,
	metadata      text NOT NULL,
	created_at    bigint NOT NULL,
	from_document boolean NOT NULL,
	dynamic       boolean NOT NULL
);

CREATE TABLE evergrant_as_grants (
	id         text PRIMARY KEY,
	client_id  text NOT NULL,
	subject    text NOT NULL,
	resource   text NOT NULL,
	scopes     text NOT NULL,
	created_at bigint NOT NULL,
	expires_at bigint NOT NULL,
	revoked    boolean NOT NULL
);
CREATE INDEX evergrant_as_grants_expires_at ON evergrant_as_grants (expires_at);
CREATE INDEX evergrant_as_grants_client_id ON evergrant_as_grants (client_id);
CREATE INDEX evergrant_as_grants_subject ON evergrant_as_grants (subject);

CREATE TABLE evergrant_as_codes (
	hash           text PRIMARY KEY,
	grant_id       text NOT NULL,
	client_id      text NOT NULL,
	redirect_uri   text NOT NULL,
	code_challenge text NOT NULL,
	scopes         text NOT NULL,
	resource       text NOT NULL,
	subject        text NOT NULL,
	expires_at     bigint NOT NULL,
	used           bigint NOT NULL DEFAULT 0
);
CREATE INDEX evergrant_as_codes_expires_at ON evergrant_as_codes (expires_at);

CREATE TABLE evergrant_as_refresh_tokens (
	hash            text PRIMARY KEY,
	grant_id        text NOT NULL,
	client_id       text NOT NULL,
	scopes          text NOT NULL,
	issued_at       bigint NOT NULL,
	expires_at      bigint NOT NULL,
	rotated_at      bigint NOT NULL,
	successor       text NOT NULL,
	replaced_unused boolean NOT NULL
);
CREATE INDEX evergrant_as_refresh_tokens_expires_at ON evergrant_as_refresh_tokens (expires_at);
CREATE INDEX evergrant_as_refresh_tokens_grant_id ON evergrant_as_refresh_tokens (grant_id, rotated_at);

CREATE TABLE evergrant_as_access_tokens (
	jti        text PRIMARY KEY,
	grant_id   text NOT NULL,
	client_id  text NOT NULL,
	subject    text NOT NULL,
	resource   text NOT NULL,
	scopes     text NOT NULL,
	issued_at  bigint NOT NULL,
	expires_at bigint NOT NULL,
	revoked    boolean NOT NULL
);
CREATE INDEX evergrant_as_access_tokens_expires_at ON evergrant_as_access_tokens (expires_at);

-- The signing keys, one row, each key sealed with AES-256-GCM under the
-- operator's secret key (nonce || ciphertext); never in the clear.
CREATE TABLE evergrant_as_signing_keys (
	id         integer PRIMARY KEY CHECK (id = 1),
	current    bytea NOT NULL,
	previous   bytea,
	rotated_at bigint NOT NULL
);
