-- The tunnel part of an agent's stats report (latest snapshot; JSON):
-- {sessions, rtt_ms_median, rtt_ms_max, paths: {direct, relay, none}}.
ALTER TABLE workspace_agents ADD COLUMN tunnel TEXT NOT NULL DEFAULT '{}';
