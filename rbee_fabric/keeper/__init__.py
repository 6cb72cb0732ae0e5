"""The keeper's library side: everything `rbee` does except printing."""
