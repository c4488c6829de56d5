"""Where files to upload come from."""
