"""Wire formats spoken between processes, each defined once: Intent, bus frames, token, errors, job states."""
