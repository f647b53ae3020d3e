"""Local fake HTTP servers (Postmark, OpenAI) that tests drive through the real client libraries."""
