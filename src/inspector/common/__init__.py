"""What every layer may use: the base class of user errors, atomic file writes, threads and memory."""
