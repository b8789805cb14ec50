"""Folders of transcribed pages: PAGE-XML, ALTO, image + text pairs; their TFDS builder."""
