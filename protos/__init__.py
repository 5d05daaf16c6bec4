"""Protocol buffers and their generated code."""
