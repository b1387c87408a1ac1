-- Trigram search over message and response where pg_trgm exists (embedded Postgres lacks it:
-- then search still works, only slower). The operator class is named with the extension's
-- schema: a managed database may keep extensions in one off the search_path.
DO $$
DECLARE
    trgm_schema name;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm unavailable (%); search falls back to sequential matching', SQLERRM;
    END;
    SELECT n.nspname INTO trgm_schema
    FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS executions_message_trgm '
                       'ON executions USING gin (message %I.gin_trgm_ops)', trgm_schema);
        EXECUTE format('CREATE INDEX IF NOT EXISTS executions_response_trgm '
                       'ON executions USING gin (response %I.gin_trgm_ops)', trgm_schema);
    END IF;
END
$$;
