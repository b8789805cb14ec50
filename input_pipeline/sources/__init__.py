"""The sources of examples, by data.source: synthetic pages and IAM."""
