-- Trigram search over message and response where pg_trgm exists (embedded Postgres lacks it:
-- then search still works, only slower).
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm unavailable (%); search falls back to sequential matching', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX IF NOT EXISTS executions_message_trgm
            ON executions USING gin (message gin_trgm_ops);
        CREATE INDEX IF NOT EXISTS executions_response_trgm
            ON executions USING gin (response gin_trgm_ops);
    END IF;
END
$$;
