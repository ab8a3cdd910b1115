-- Version 2: the refresh tokens of a grant by rotation time, for
-- PruneRefreshTokens (a grant keeps a bounded history of retired tokens).
CREATE INDEX refresh_tokens_grant_id ON refresh_tokens (grant_id, rotated_at);
