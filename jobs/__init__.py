"""Entry points: ``ray job submit`` scripts and the single-video command (``pllava-caption``)."""
