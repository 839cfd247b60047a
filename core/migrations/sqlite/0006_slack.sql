-- Slack notifications: an Incoming Webhook URL per space and the events it
-- is told of (JSON array of created, started, completed, failed, dead,
-- killed). The notifier's cursor lives in settings (`slack:<space id>`).
ALTER TABLE spaces ADD COLUMN slack_url TEXT;
ALTER TABLE spaces ADD COLUMN slack_events TEXT;
