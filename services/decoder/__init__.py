"""The decoder service: prompts to image tokens to pixels, pass by pass, per-tier lanes."""
