-- burrow schema v1 (PostgreSQL).  Times are UNIX seconds (REAL); JSON is TEXT.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL UNIQUE,
    hashed_password TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hashed_secret TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    active_version_id TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE template_versions (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    archive BYTEA NOT NULL,
    archive_size INTEGER NOT NULL,
    archive_sha256 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (template_id, name)
);
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id TEXT NOT NULL REFERENCES users(id),
    template_id TEXT NOT NULL REFERENCES templates(id),
    created_at DOUBLE PRECISION NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX workspaces_owner_name ON workspaces(owner_id, name) WHERE deleted = 0;
CREATE TABLE provisioner_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION,
    cancel_requested_at DOUBLE PRECISION,
    heartbeat_at DOUBLE PRECISION,
    daemon_id TEXT,
    error TEXT,
    result TEXT
);
CREATE INDEX provisioner_jobs_pending ON provisioner_jobs(created_at) WHERE started_at IS NULL AND completed_at IS NULL;
CREATE TABLE provisioner_job_logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES provisioner_jobs(id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    level TEXT NOT NULL,
    stage TEXT NOT NULL,
    output TEXT NOT NULL
);
CREATE INDEX provisioner_job_logs_job ON provisioner_job_logs(job_id, id);
CREATE TABLE workspace_builds (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    template_version_id TEXT NOT NULL REFERENCES template_versions(id),
    build_number INTEGER NOT NULL,
    transition TEXT NOT NULL,
    initiator_id TEXT NOT NULL REFERENCES users(id),
    job_id TEXT NOT NULL REFERENCES provisioner_jobs(id),
    variables TEXT NOT NULL,
    agent_token_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (workspace_id, build_number)
);
CREATE INDEX workspace_builds_job ON workspace_builds(job_id);
CREATE TABLE workspace_resources (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL REFERENCES workspace_builds(id),
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    persistence TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX workspace_resources_build ON workspace_resources(build_id);
CREATE TABLE workspace_agents (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL REFERENCES workspace_builds(id),
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    resource_id TEXT,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    directory TEXT NOT NULL,
    startup_script TEXT NOT NULL,
    env TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_connected_at DOUBLE PRECISION
);
CREATE INDEX workspace_agents_build ON workspace_agents(build_id);
CREATE INDEX workspace_agents_token ON workspace_agents(token_hash);
CREATE TABLE provisioner_daemons (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE workspace_terraform_state (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
    state BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
