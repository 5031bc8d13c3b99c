-- Provisioner tags per template version: a build's job carries its version's
-- tags, and only daemons having all of them take it.
ALTER TABLE template_versions ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
