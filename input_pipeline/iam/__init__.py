"""The IAM Handwriting Database: its files, its word bank and its TFDS builder."""
