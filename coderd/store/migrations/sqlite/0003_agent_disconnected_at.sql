-- When a workspace agent's coordinator connection last ended (NULL while connected
-- or never connected); with last_connected_at it gives the agent's status.
ALTER TABLE workspace_agents ADD COLUMN disconnected_at REAL;
