-- The agent's startup/shutdown script output, and the agent options a
-- template declares beyond the startup script (shutdown_script,
-- startup_script_timeout, start_blocks_login; JSON).
ALTER TABLE workspace_agents ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
CREATE TABLE workspace_agent_logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES workspace_agents(id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    output TEXT NOT NULL
);
CREATE INDEX workspace_agent_logs_agent ON workspace_agent_logs(agent_id, id);
