"""Steps 2-6 across processes: each process works on its slice of the pairs (issue 20)."""
