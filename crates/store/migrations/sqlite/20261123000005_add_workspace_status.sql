-- A parent workspace can suspend a child: every credential in it is refused.
ALTER TABLE workspaces ADD COLUMN status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended'));
