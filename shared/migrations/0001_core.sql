-- Core schema: tenants, people, agents, executions, their steps, and the events applied to them.

CREATE TABLE organizations (
    org             text PRIMARY KEY,
    display_name    text,
    retention_days  integer NOT NULL DEFAULT 30 CHECK (retention_days > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    org           text NOT NULL REFERENCES organizations (org) ON DELETE CASCADE,
    user_id       text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'user', 'client')),
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, user_id)
);

CREATE TABLE projects (
    org         text NOT NULL REFERENCES organizations (org) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, name)
);

CREATE TABLE workflows (
    org         text NOT NULL REFERENCES organizations (org) ON DELETE CASCADE,
    name        text NOT NULL,
    project     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, name)
);

CREATE TABLE agents (
    org           text NOT NULL REFERENCES organizations (org) ON DELETE CASCADE,
    name          text NOT NULL,
    display_name  text,
    owner         text,
    project       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    PRIMARY KEY (org, name)
);

CREATE TABLE agent_shares (
    org         text NOT NULL,
    agent_name  text NOT NULL,
    user_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, agent_name, user_id),
    FOREIGN KEY (org, agent_name) REFERENCES agents (org, name) ON DELETE CASCADE
);
CREATE INDEX agent_shares_user ON agent_shares (org, user_id);

CREATE TABLE api_keys (
    org         text NOT NULL REFERENCES organizations (org) ON DELETE CASCADE,
    key_id      text PRIMARY KEY,
    key_hash    text NOT NULL,
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per execution. `versions` records, per field, which event set it
-- (status rank, occurred_at, event id hash), so that any order of the same events
-- folds to the same row. `sort_at` is the list order: started_at, or first sight if unstarted.
CREATE TABLE executions (
    org                  text NOT NULL,
    id                   text NOT NULL,
    agent_name           text NOT NULL,
    project              text,
    workflow             text,
    schedule_id          text,
    status               text NOT NULL,
    triggered_by         text,
    message              text,
    response             text,
    error                text,
    error_type           text,
    started_at           timestamptz,
    completed_at         timestamptz,
    duration_ms          bigint,
    context_used         bigint,
    context_max          bigint,
    cost                 double precision,
    tokens_in            bigint,
    tokens_out           bigint,
    tool_calls           jsonb,
    execution_log        text,
    engine               text,
    external_id          text,
    parent_execution_id  text,
    first_seen_at        timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    versions             jsonb NOT NULL DEFAULT '{}'::jsonb,
    sort_at              timestamptz GENERATED ALWAYS AS (coalesce(started_at, first_seen_at)) STORED,
    PRIMARY KEY (org, id)
);
CREATE INDEX executions_list ON executions (org, sort_at DESC, id DESC);
CREATE INDEX executions_by_agent ON executions (org, agent_name, sort_at DESC, id DESC);
CREATE INDEX executions_by_status ON executions (org, status, sort_at DESC, id DESC);
CREATE INDEX executions_by_trigger ON executions (org, triggered_by, sort_at DESC, id DESC);
CREATE INDEX executions_running ON executions (org, sort_at) WHERE status = 'running';
CREATE INDEX executions_external ON executions (org, engine, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX executions_children ON executions (org, parent_execution_id)
    WHERE parent_execution_id IS NOT NULL;

CREATE TABLE component_executions (
    org            text NOT NULL,
    execution_id   text NOT NULL,
    node_id        text NOT NULL,
    attempt        integer NOT NULL,
    agent_name     text NOT NULL,
    name           text,
    status         text NOT NULL,
    retry_policy   text,
    max_attempts   integer,
    input          jsonb,
    output         jsonb,
    error          text,
    error_type     text,
    started_at     timestamptz,
    completed_at   timestamptz,
    first_seen_at  timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    versions       jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (org, execution_id, node_id, attempt)
);

-- Every event ingest applied, keyed per org so no tenant can shadow another's ids.
CREATE TABLE events (
    org           text NOT NULL,
    event_id      text NOT NULL,
    type          text NOT NULL,
    agent_name    text NOT NULL,
    execution_id  text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    stream_seq    bigint,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, event_id)
);
CREATE INDEX events_received ON events (org, received_at);
