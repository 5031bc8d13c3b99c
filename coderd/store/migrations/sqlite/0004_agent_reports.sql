-- What a running agent reports: its lifecycle state, listening ports and
-- connection stats (latest snapshot; JSON).
ALTER TABLE workspace_agents ADD COLUMN lifecycle_state TEXT NOT NULL DEFAULT 'created';
ALTER TABLE workspace_agents ADD COLUMN lifecycle_changed_at REAL;
ALTER TABLE workspace_agents ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';
ALTER TABLE workspace_agents ADD COLUMN stats TEXT NOT NULL DEFAULT '{}';
ALTER TABLE workspace_agents ADD COLUMN reported_at REAL;
