"""Storage and sources: object-store reads and writes with retries, video lists, the output's layout, secret masking."""
